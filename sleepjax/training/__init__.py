"""Config-driven training of sleepjax models.

* :mod:`~sleepjax.training.config` -- the experiment ConfigDict layout and ``validate_config``;
* :mod:`~sleepjax.training.optimizer` -- Muon + AdamW, clipping, warmup-stable-decay schedule;
* :mod:`~sleepjax.training.state` / :mod:`~sleepjax.training.train_step` -- the pure step;
* :mod:`~sleepjax.training.evaluate` -- exact-match accuracy by difficulty;
* :mod:`~sleepjax.training.checkpointing` -- orbax checkpoints with the grain iterator state,
  and ``load_params(workdir)`` (a run's trained parameters and config, e.g. for inference);
* :mod:`~sleepjax.training.trainer` -- ``train_and_evaluate(cfg, workdir)``;
* :mod:`~sleepjax.training.initialization` / :mod:`~sleepjax.training.warm_start` -- the
  ``init`` section: start from a Hugging Face checkpoint or another run, insert GDN blocks;
  :mod:`~sleepjax.training.param_groups` -- ``optim.trainable`` (freeze the other parameters);
* :mod:`~sleepjax.training.logging` / :mod:`~sleepjax.training.plots` -- outputs (written by
  the primary process only in a multi-host job).

The command-line entry points are ``python -m sleepjax.train`` and ``python -m sleepjax.sweep``.
"""

from __future__ import annotations

import importlib

# The public API, imported on first use so that ``import sleepjax.training.config`` stays light
# (the trainer pulls in the model, data pipeline, orbax and grain).
_PUBLIC = {
    "train_and_evaluate": "sleepjax.training.trainer",
    "load_params": "sleepjax.training.checkpointing",
    "TrainedParams": "sleepjax.training.checkpointing",
    "validate_config": "sleepjax.training.config",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
