"""Checkpoints: train state, data-iterator position and the resolved config, saved together.

One orbax ``CheckpointManager`` step directory holds three items:

* ``state``  -- the :class:`~sleepjax.training.state.TrainState` pytree (params, optimiser
  state, step, RNG), written asynchronously when enabled;
* ``data``   -- the grain iterator state (grain's own orbax handler, one file per process);
* ``config`` -- the flattened experiment config as JSON, used to refuse resuming a workdir
  with a different experiment.

Restoring takes abstract arrays carrying the target shardings, so a checkpoint written on one
mesh restores onto another.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from sleepjax.training.config import config_differences, flatten_config


class ConfigMismatchError(ValueError):
    """The workdir holds a checkpoint of a different experiment."""


class Checkpointer:
    """Save / restore (state, data iterator, config) in ``directory``, keeping the last ``keep``."""

    def __init__(self, directory: str, *, keep: int, async_save: bool):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def saved_config(self, step: int | None = None) -> dict[str, Any]:
        """The flattened config stored with checkpoint ``step`` (default: the latest)."""
        step = self.latest_step() if step is None else step
        restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return dict(restored["config"])

    def check_compatible(self, cfg, step: int | None = None) -> None:
        """Raise :class:`ConfigMismatchError` listing every field where ``cfg`` differs from the
        checkpoint's config (fields in ``config.RESUMABLE_KEYS`` may differ)."""
        step = self.latest_step() if step is None else step
        diffs = config_differences(self.saved_config(step), flatten_config(cfg))
        if diffs:
            raise ConfigMismatchError(
                f"refusing to resume from {self.directory} (step {step}): the checkpoint was "
                f"written by a different config; differing fields:\n  " + "\n  ".join(diffs)
                + "\nUse another --workdir, or the checkpoint's config.")

    def save(self, step: int, state, data_iterator, cfg) -> None:
        """Start saving checkpoint ``step`` (returns once the state is copied off the devices)."""
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            config=ocp.args.JsonSave(flatten_config(cfg)),
        ))

    def restore(self, step: int, abstract_state, data_iterator):
        """Restore checkpoint ``step`` into ``abstract_state``'s shapes, dtypes and shardings.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with ``sharding`` set;
        ``data_iterator`` is repositioned in place. Returns the restored state.
        """
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
        ))
        return restored["state"]

    def wait(self) -> None:
        """Block until every pending asynchronous save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def abstract_like(tree, shardings):
    """``jax.ShapeDtypeStruct`` tree of ``tree`` carrying ``shardings`` (the restore target)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)
