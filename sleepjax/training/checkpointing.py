"""Checkpoints: train state, data-iterator position and the resolved config, saved together.

One orbax ``CheckpointManager`` step directory holds four items:

* ``state``  -- the :class:`~sleepjax.training.state.TrainState` pytree (params, optimiser
  state, step, RNG), written asynchronously when enabled;
* ``data``   -- the grain iterator state (grain's own orbax handler, one file per process);
* ``config`` -- the flattened experiment config as JSON, used to refuse resuming a workdir
  with a different experiment;
* ``progress`` -- JSON facts about the run up to that step (its total wall time so far).

A save runs in the background (when asynchronous); a failed one is noticed after the first
training step that follows the end of its write (:meth:`Checkpointer.seal_finished`, called
after every step), not at the next save, and raised as a one-line
:class:`~sleepjax.training.checkpoint_errors.CheckpointWriteError`, orbax's tracebacks going
to a log file (:mod:`~sleepjax.training.checkpoint_errors`); earlier checkpoints stay intact.

Once a save is on disk, a SHA-256 manifest of the step's files is added to the step directory
(:mod:`~sleepjax.training.checkpoint_integrity`); restoring verifies it first, and a damaged
step is named (step and file) and skipped for the previous intact one.

Restoring takes abstract arrays carrying the target shardings, so a checkpoint written on one
mesh (or number of processes) restores onto another. :func:`load_params` restores only the
trained parameters (and the run's config) of a workdir, e.g. for inference.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
from typing import Any, NamedTuple

import grain
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from sleepjax.models.config import ModelConfig, SleepConfig
from sleepjax.training import checkpoint_integrity as integrity
from sleepjax.training import paths
from sleepjax.training.checkpoint_errors import CheckpointErrorLog, write_error
from sleepjax.training.checkpoint_integrity import CheckpointDamagedError
from sleepjax.training.config import flat_defaults
from sleepjax.training.config_io import (CHECKPOINT_SUBDIR, config_differences, flatten_config,
                                         saved_run_configs, unflatten_config)

DAMAGED_SUBDIR = "damaged_checkpoints"   # where a damaged step is moved when a run falls back
# Fields that may differ on resume (config_io.RESUMABLE_KEYS) but change the learning-rate schedule.
SCHEDULE_KEYS = ("train.steps",)

_log = logging.getLogger(__name__)


class ConfigMismatchError(ValueError):
    """The workdir holds a checkpoint of a different experiment."""


class ScheduleChangeError(ConfigMismatchError):
    """Resuming would change the learning-rate schedule and the user did not say it is intended."""


class Checkpointer:
    """Save / restore (state, data iterator, config, progress) in ``directory``, keeping ``keep``.

    ``write_manifests``: add the checksum manifest to each finished step (only one process of a
    multi-host job should; every process verifies).
    """

    def __init__(self, directory, *, keep: int, async_save: bool,
                 write_manifests: bool = True):
        self.directory = paths.as_path(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._errors = CheckpointErrorLog(self.directory.parent).__enter__()
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._write_manifests = write_manifests
        self._unsealed: list[int] = []     # saved steps whose manifest is not written yet
        self._failed = False

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def step_dir(self, step: int):
        return self.directory / str(step)

    def saved_config(self, step: int | None = None) -> dict[str, Any]:
        """The flattened config stored with checkpoint ``step`` (default: the latest)."""
        step = self.latest_step() if step is None else step
        restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return dict(restored["config"])

    def check_compatible(self, cfg, step: int | None = None, *,
                         allow_schedule_change: bool = False) -> list[str]:
        """Raise :class:`ConfigMismatchError` listing every field where ``cfg`` differs from the
        checkpoint's config (fields in ``config_io.RESUMABLE_KEYS`` may differ), and
        :class:`ScheduleChangeError` if a :data:`SCHEDULE_KEYS` field differs unless
        ``allow_schedule_change``. Returns the (allowed) schedule changes."""
        step = self.latest_step() if step is None else step
        saved, current = self.saved_config(step), flatten_config(cfg)
        diffs = config_differences(saved, current, flat_defaults(current))
        if diffs:
            raise ConfigMismatchError(
                f"refusing to resume from {self.directory} (step {step}): the checkpoint was "
                f"written by a different config; differing fields:\n  " + "\n  ".join(diffs)
                + "\nUse another --workdir, or the checkpoint's config.")
        changes = [f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in SCHEDULE_KEYS
                   if saved.get(key) != current.get(key)]
        if changes and not allow_schedule_change:
            raise ScheduleChangeError(
                f"refusing to resume from step {step}: {'; '.join(changes)} changes the "
                "learning-rate schedule mid-run; pass --allow_schedule_change if intended")
        return changes

    def save(self, step: int, state, data_iterator, cfg, progress: dict | None = None) -> None:
        """Start saving checkpoint ``step`` (returns once the state is copied off the devices).

        ``progress``: JSON-able facts about the run so far (e.g. ``{"wall_time_s": ..}``).
        """
        self.seal_finished(block=True)   # orbax would wait for the previous save anyway
        try:
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
                config=ocp.args.JsonSave(flatten_config(cfg)),
                progress=ocp.args.JsonSave(dict(progress or {})),
            ))
        except Exception as error:   # a synchronous save (or its start) failed
            raise self._failure(step, error) from None
        self._unsealed.append(step)

    def seal_finished(self, block: bool = False) -> None:
        """Write the checksum manifest of every save that is now on disk (cheap when none is:
        called after every training step). ``block``: wait for the in-flight save first.

        Raises:
          CheckpointWriteError: the save finished but failed (one line; traceback in the log).
        """
        if not self._unsealed:
            return
        if not block and self._manager.is_saving_in_progress():
            return
        try:
            self._manager.wait_until_finished()
            self._manager.check_for_errors()
        except Exception as error:
            step, self._unsealed = self._unsealed[-1], []
            raise self._failure(step, error) from None
        for step in self._unsealed:
            if self._write_manifests and self.step_dir(step).is_dir():
                integrity.write_manifest(self.step_dir(step))
        self._unsealed = []

    def verify(self, step: int) -> bool:
        """Check checkpoint ``step`` against its manifest (see ``checkpoint_integrity.verify_step``)."""
        return integrity.verify_step(self.step_dir(step), step)

    def quarantine(self, step: int) -> str:
        """Move a damaged step to ``<workdir>/damaged_checkpoints/`` so it can be saved again."""
        target = integrity.quarantine(self.step_dir(step), self.directory.parent / DAMAGED_SUBDIR)
        self._manager.reload()
        return target

    def restore(self, step: int, abstract_state, data_iterator):
        """Restore checkpoint ``step`` into ``abstract_state``'s shapes, dtypes and shardings.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with ``sharding`` set;
        ``data_iterator`` is repositioned in place. Returns the restored state.

        Raises:
          CheckpointDamagedError: a file differs from the step's manifest, cannot be read, or
            the restored arrays are not all finite.
        """
        self.verify(step)
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if not self._restore_data_of_other_process_count(step, data_iterator):
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, OSError) as error:   # a damaged file orbax / tensorstore cannot read
            raise CheckpointDamagedError(step, self.step_dir(step),
                                         f"restore failed ({error})") from None
        bad_leaf = first_non_finite_leaf(restored["state"])
        if bad_leaf is not None:
            raise CheckpointDamagedError(step, self.step_dir(step),
                                         f"restored array {bad_leaf} has non-finite values")
        return restored["state"]

    def _restore_data_of_other_process_count(self, step: int, data_iterator) -> bool:
        """Position ``data_iterator`` from a checkpoint of another number of processes (grain
        writes ``process_<i>-of-<n>.json`` each); False if this job's own file is there. Each
        position is the batch count, equal on all processes; differing ones are refused."""
        data_dir = self.step_dir(step) / "data"
        own = data_dir / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if own.exists() or not data_dir.is_dir():
            return False
        written = [p for p in data_dir.iterdir() if p.name.startswith("process_")]
        states = {p.read_text() for p in written}
        if len(states) != 1:
            raise ValueError(f"checkpoint step {step} in {self.directory}: its "
                             f"{len(written)} data-iterator files hold different positions, so "
                             f"it cannot be resumed by {jax.process_count()} process(es); resume "
                             "it with the number of processes that wrote it")
        data_iterator.set_state(json.loads(states.pop()))
        return True

    def progress(self, step: int) -> dict[str, Any]:
        """The ``progress`` item of checkpoint ``step`` (empty for checkpoints without one)."""
        if not (self.step_dir(step) / "progress").is_dir():
            return {}
        restored = self._manager.restore(step, args=ocp.args.Composite(
            progress=ocp.args.JsonRestore()))
        return dict(restored["progress"])

    def wait(self) -> None:
        """Block until every pending asynchronous save is on disk (and has its manifest)."""
        self.seal_finished(block=True)

    def _failure(self, step: int, error: Exception):
        self._failed = True
        earlier = [s for s in self.all_steps() if s < step]
        return write_error(step, error, self.directory, max(earlier, default=None), self._errors)

    def close(self) -> None:
        try:
            if not self._failed:
                self.seal_finished(block=True)
            self._manager.close()
        except Exception as error:
            if not self._failed:
                raise
            self._errors.append(f"while closing after the failure: {error!r}")   # said already
        finally:
            if not self._failed:   # after a failure orbax's threads may still log errors
                self._errors.__exit__()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def first_non_finite_leaf(tree) -> str | None:
    """The key path of the first floating-point leaf of ``tree`` holding a NaN / inf, or None."""
    leaves = [(jax.tree_util.keystr(path), leaf)
              for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
              if jnp.issubdtype(leaf.dtype, jnp.floating)]
    finite = jax.device_get([jnp.isfinite(leaf).all() for _, leaf in leaves])  # one transfer
    return next((name for (name, _), ok in zip(leaves, finite) if not ok), None)


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
      CheckpointDamagedError: (a ValueError) the requested ``step`` fails its checksums, cannot
        be read or holds non-finite parameters; with ``step=None`` a damaged latest checkpoint
        is reported as a warning and the previous intact one is loaded.
    """
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"load_params: step must be a non-negative int or None (got {step!r})")
        step = int(step)
    workdir = os.fspath(workdir)
    run_dir = paths.as_path(workdir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"load_params: run directory {workdir!r} does not exist")
    directory = run_dir / CHECKPOINT_SUBDIR
    no_checkpoint = FileNotFoundError(
        f"load_params: {workdir!r} holds no checkpoint (expected {CHECKPOINT_SUBDIR}/<step>/ "
        f"as written by python -m sleepjax.train --workdir={workdir})")
    if not directory.is_dir():
        raise no_checkpoint
    # A manager that never creates or saves; every item's handler is named so reading the
    # metadata of a step warns about none of them.
    manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(create=False),
        item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler(),
                       "progress": ocp.JsonCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise no_checkpoint
        if step is not None and step not in steps:
            raise ValueError(f"load_params: step={step} has no checkpoint in {workdir!r}; "
                             f"saved steps: {steps}")
        # An explicitly requested step is refused if damaged; the default falls back.
        candidates = [step] if step is not None else steps[::-1]
        for candidate in candidates:
            try:
                params, config = _restore_params(manager, directory, candidate, sharding)
                break
            except CheckpointDamagedError as error:
                if candidate == candidates[-1]:
                    raise
                _log.warning("%s; loading the previous checkpoint instead", error)
    finally:
        manager.close()
    model, sleep = saved_run_configs(config)
    return TrainedParams(params=params, step=int(candidate), config=config, model=model,
                         sleep=sleep)


def _restore_params(manager, directory, step: int, sharding):
    """``(params, config)`` of one verified checkpoint step (see :func:`load_params`)."""
    step_dir = directory / str(step)
    integrity.verify_step(step_dir, step)
    try:
        saved_params = manager.item_metadata(step)["state"].tree["params"]
    except (ValueError, OSError) as error:
        raise CheckpointDamagedError(step, step_dir, f"unreadable metadata ({error})") from None
    target = _abstract_params(saved_params, sharding)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item={"params": target},
                restore_args=ocp.checkpoint_utils.construct_restore_args({"params": target}),
                partial_restore=True),
            config=ocp.args.JsonRestore()))
    except (ValueError, OSError) as error:
        raise CheckpointDamagedError(step, step_dir, f"restore failed ({error})") from None
    params = restored["state"]["params"]
    bad_leaf = first_non_finite_leaf(params)
    if bad_leaf is not None:
        raise CheckpointDamagedError(step, step_dir,
                                     f"restored parameter {bad_leaf} has non-finite values")
    return params, unflatten_config(restored["config"])


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
