"""Checkpoints: train state, data-iterator position and the resolved config, saved together.

One orbax ``CheckpointManager`` step directory holds three items:

* ``state``  -- the :class:`~sleepjax.training.state.TrainState` pytree (params, optimiser
  state, step, RNG), written asynchronously when enabled;
* ``data``   -- the grain iterator state (grain's own orbax handler, one file per process);
* ``config`` -- the flattened experiment config as JSON, used to refuse resuming a workdir
  with a different experiment.

Restoring takes abstract arrays carrying the target shardings, so a checkpoint written on one
mesh restores onto another. :func:`load_params` restores only the trained parameters (and the
run's config) of a workdir, e.g. for inference.
"""

from __future__ import annotations

import numbers
import os
from typing import Any, NamedTuple

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from sleepjax.models.config import ModelConfig, SleepConfig
from sleepjax.training.config import (config_differences, flatten_config, unflatten_config,
                                      validate_config)

CHECKPOINT_SUBDIR = "checkpoints"   # <workdir>/checkpoints/<step>/ (see trainer.py)


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


class TrainedParams(NamedTuple):
    """What :func:`load_params` returns."""

    params: Any                        # the ``params`` pytree: ``model.apply({"params": params}, ..)``
    step: int                          # the training step the checkpoint was written at
    config: ml_collections.ConfigDict  # the run's experiment config, as saved with the checkpoint
    model: ModelConfig                 # resolved model config (vocab size from the task)
    sleep: SleepConfig                 # resolved sleep config (window from the task if unset)


def load_params(workdir: str | os.PathLike, step: int | None = None, *, sharding=None
                ) -> TrainedParams:
    """Restore the trained parameters and config of a run directory written by ``sleepjax.train``.

    Only ``params`` is read from the checkpoint's train state (not the optimiser state).

    Args:
      workdir: the run's ``--workdir`` (holding ``checkpoints/<step>/``).
      step: which checkpoint; default the latest.
      sharding: where the parameters go: ``None`` (the first local device), one
        ``jax.sharding.Sharding`` for every leaf (e.g. ``NamedSharding(mesh, P())`` to replicate
        over a mesh), or a pytree of shardings shaped like the parameters.

    Returns:
      :class:`TrainedParams` ``(params, step, config, model, sleep)``; build the model with
      ``SleepLM(loaded.model, loaded.sleep)``.

    Raises:
      FileNotFoundError: ``workdir`` does not exist or holds no checkpoint.
      ValueError: ``step`` is not a non-negative int or has no checkpoint in ``workdir``, or
        ``sharding`` does not match the parameters.
    """
    workdir = os.fspath(workdir)
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"load_params: step must be a non-negative int or None (got {step!r})")
        step = int(step)
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"load_params: run directory {workdir!r} does not exist")
    directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_SUBDIR))
    no_checkpoint = FileNotFoundError(
        f"load_params: {workdir!r} holds no checkpoint (expected {CHECKPOINT_SUBDIR}/<step>/ "
        f"as written by python -m sleepjax.train --workdir={workdir})")
    if not os.path.isdir(directory):
        raise no_checkpoint
    # A manager that never creates or saves; every item's handler is named so reading the
    # metadata of a step warns about none of them.
    manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(create=False),
        item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise no_checkpoint
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise ValueError(f"load_params: step={step} has no checkpoint in {workdir!r}; "
                             f"saved steps: {steps}")
        saved_params = manager.item_metadata(step)["state"].tree["params"]
        target = _abstract_params(saved_params, sharding)
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item={"params": target},
                restore_args=ocp.checkpoint_utils.construct_restore_args({"params": target}),
                partial_restore=True),
            config=ocp.args.JsonRestore()))
    finally:
        manager.close()
    config = unflatten_config(restored["config"])
    model, sleep = _resolve_model_configs(config)
    return TrainedParams(params=restored["state"]["params"], step=int(step), config=config,
                         model=model, sleep=sleep)


def _abstract_params(saved_params, sharding):
    """``ShapeDtypeStruct`` tree of the saved parameters, placed by ``sharding`` (see load_params)."""
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    if isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                            saved_params)
    try:
        return jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s),
                            saved_params, sharding)
    except ValueError as error:
        raise ValueError("load_params: sharding must be None, a jax.sharding.Sharding, or a "
                         f"pytree of shardings shaped like the parameters ({error})") from None


def _resolve_model_configs(config) -> tuple[ModelConfig, SleepConfig]:
    """The typed model and sleep configs of a saved experiment config.

    Validated against a 1-device mesh: the training mesh decides how the parameters were
    sharded, not what they are, and may not fit the devices of the process loading them.
    """
    single_device = ml_collections.ConfigDict(config.to_dict())
    single_device.mesh = {"data": 1, "fsdp": 1, "model": 1}
    resolved = validate_config(single_device, num_devices=1)
    return resolved.model, resolved.sleep
