"""Procedural data for the sleep tasks: Rule 110, Depo and GSM-Infinite-style math (or, with
``task.gsm_infinite_files``, the published GSM-Infinite rows: ``sleepjax.data.gsm_infinite``).

Public API:

* ``task_config(name, **overrides)`` -> ``ml_collections.ConfigDict`` of a task's defaults;
* ``validate_task_config(task_cfg)`` -> plain dict; ValueError naming ``task.<key>`` on bad input;
* ``default_window(task_cfg)`` -> the task's natural attention window L;
* ``make_source(task_cfg, split, seed)`` -> grain random-access source of records (dicts of
  ``inputs``, ``targets``, ``loss_mask``, ``answer_id``, ``difficulty``; see ``source``);
* ``make_dataset(source, batch_size=..., seed=..., ...)`` -> shuffled, sharded, batched, prefetched
  ``grain.IterDataset`` whose iterator checkpoints with ``get_state`` / ``set_state`` (or grain's
  orbax ``CheckpointSave`` / ``CheckpointRestore``).
"""

from sleepjax.data.configs import TASKS, default_window, seq_len, task_config, validate_task_config
from sleepjax.data.pipeline import make_dataset, make_source
from sleepjax.data.source import SPLITS, Example, ProceduralSource, example_to_record, split_of
from sleepjax.data.tokenizers import Tokenizer

__all__ = [
    "SPLITS", "TASKS", "Example", "ProceduralSource", "Tokenizer", "default_window",
    "example_to_record", "make_dataset", "make_source", "seq_len", "split_of", "task_config",
    "validate_task_config",
]
