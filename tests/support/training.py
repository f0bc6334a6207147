"""Helpers shared by the training / config / checkpoint tests (imported as support.training)."""

from __future__ import annotations

import os

from sleepjax import data
from sleepjax.training.experiment_files import apply_overrides, load_config

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TESTS)
RULE110 = os.path.join(REPO, "experiments", "rule110.py")

# A Rule 110 instance small enough to compile and run in seconds: 2 states of 8 cells
# (T = 18, window 8: two consolidation windows and a prediction window), d_model 32, "AG".
TINY_OVERRIDES = {
    "model.d_model": 32, "model.layer_pattern": "AG", "model.attn_heads": 2,
    "model.attn_head_dim": 16, "model.gdn_heads": 2, "model.gdn_head_dim": 16,
    "model.mlp_hidden": 64, "model.gdn_chunk_size": 8,
    "sleep.window": 8,
    "train.steps": 6, "train.batch_size": 8, "train.log_every": 1, "train.eval_every": 0,
    "train.eval_examples": 32, "train.eval_batch_size": 16, "train.checkpoint_every": 3,
    "train.progress_bar": False,
}


def tiny_config(**overrides):
    """The tiny Rule 110 test config; ``overrides`` use ``__`` for dots (``sleep__passes=2``)."""
    cfg = load_config(f"{RULE110}:tiny")
    cfg.task = data.task_config("rule110", t=1, cells=8, num_states=2, num_test=64)
    merged = dict(TINY_OVERRIDES)
    merged.update({k.replace("__", "."): v for k, v in overrides.items()})
    return apply_overrides(cfg, merged)


def enable_compilation_cache(directory: str):
    """Turn on JAX's persistent compilation cache in ``directory``; returns an undo function.

    Runs of identical configs (an interrupted run and its resumption) then compile once.
    """
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    saved = {name: getattr(jax.config, name) for name in (
        "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes")}
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()
    compilation_cache.set_cache_dir(directory)

    def undo():
        compilation_cache.reset_cache()
        for name, value in saved.items():
            jax.config.update(name, value)

    return undo


def write_tiny_config_file(path, **overrides) -> str:
    """An experiment file returning ``tiny_config(**overrides)``, for CLI subprocesses
    (``--config=<path>``); returns ``path``."""
    with open(path, "w") as f:
        f.write("import sys\n"
                f"sys.path.insert(0, {TESTS!r})\n"
                "from support.training import tiny_config\n\n\n"
                "def get_config(arg=None):\n"
                f"    cfg = tiny_config(**{overrides!r})\n"
                "    cfg.lock()\n"
                "    return cfg\n")
    return str(path)


def tensorboard_records(logdir: str) -> list[tuple[str, int]]:
    """Every ``(tag, step)`` scalar record of the event files in ``logdir`` (TFRecord framing:
    8-byte length, 4-byte CRC, the Event proto, 4-byte CRC)."""
    import struct

    from tensorboardX.proto import event_pb2

    records = []
    for name in sorted(os.listdir(logdir)):
        with open(os.path.join(logdir, name), "rb") as f:
            raw = f.read()
        position = 0
        while position + 12 <= len(raw):
            (length,) = struct.unpack("<Q", raw[position:position + 8])
            event = event_pb2.Event.FromString(raw[position + 12:position + 12 + length])
            position += 12 + length + 4
            records += [(value.tag, int(event.step)) for value in event.summary.value]
    return records
