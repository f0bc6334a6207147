"""The training job: config -> trained, evaluated, checkpointed model in a workdir.

``train_and_evaluate(cfg, workdir)`` validates the whole config first, builds the mesh, data,
model and optimiser, resumes from the workdir's latest checkpoint if there is one (refusing if
it was written by a different config), then trains, evaluating every ``train.eval_every``
steps and at the end. Workdir layout::

    config.json, config.txt   resolved config
    workdir.lock              held while a run is in progress (names its pid / host)
    checkpoints/<step>/       orbax: state, data iterator, config, progress; checksums.json
    damaged_checkpoints/      steps that failed verification on resume (kept for inspection)
    tensorboard/              event files (rebuilt from the two files below on resume)
    train_log.jsonl           one line per logged step (loss, grad norm, token accuracy, lr)
    eval.json                 evaluation history (step, tokens seen, accuracy by difficulty)

Reliability: a second run into a busy workdir is refused (:mod:`workdir_lock`); an evaluation
due at a checkpoint step runs before that checkpoint is saved, so an interrupt never skips it;
Ctrl-C / SIGTERM stop after the current step with a final checkpoint (:mod:`interrupts`), on
every process of a multi-host job at the same step (:mod:`~sleepjax.parallel.stop_agreement`); a
failed checkpoint write stops the run at the first step after it (:mod:`checkpoint_errors`); a
damaged latest checkpoint is reported and the previous intact one used; the run's total wall
time is carried across resumes in the checkpoints.

In a multi-host job every process runs ``train_and_evaluate``: all of them train, evaluate
(collectives) and call the checkpointer (orbax coordinates the multi-host save), but only the
primary process writes the other files (see :class:`~sleepjax.training.logging.RunLogger`).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sleepjax import data
from sleepjax.models import SleepLM
from sleepjax.models.pass_law import passes_for_step
from sleepjax.parallel.data_parallel import jit_train_step
from sleepjax.parallel.logical_axes import replicated, with_shardings
from sleepjax.parallel.mesh import make_mesh, validate_model_for_mesh
from sleepjax.parallel.multihost import batch_sharding, host_shard_info, make_global_batch
from sleepjax.parallel.stop_agreement import agreed_stop
from sleepjax.parallel.state_shardings import train_state_shardings
from sleepjax.training import evaluate as evaluation
from sleepjax.training import initialization, paths, warm_start
from sleepjax.training.checkpointing import CheckpointDamagedError, Checkpointer
from sleepjax.training.config_io import CHECKPOINT_SUBDIR
from sleepjax.training.config import ResolvedConfig, validate_config
from sleepjax.training.interrupts import StopRequests, TrainingInterrupted
from sleepjax.training import logging as run_logging
from sleepjax.training.logging import RunLogger, read_eval_history
from sleepjax.training.optimizer import learning_rate_schedules, make_optimizer
from sleepjax.training.state import TrainState, init_train_state, train_state_from_params
from sleepjax.training.train_step import TRAIN_BATCH_KEYS, make_eval_step, make_train_step
from sleepjax.training.workdir_lock import WorkdirLock

_log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss or gradient; the bad update was not applied or saved."""


def train_and_evaluate(cfg, workdir, *,
                       step_callback: Callable[[int, Mapping[str, float]], None] | None = None,
                       allow_schedule_change: bool = False) -> dict:
    """Train and evaluate the experiment ``cfg`` in ``workdir``; resume if it holds a checkpoint.

    Args:
      cfg: experiment ``ConfigDict`` (see :mod:`sleepjax.training.config`).
      workdir: output directory (created): a local path or ``gs://bucket/dir``
        (:mod:`~sleepjax.training.paths`).
      step_callback: called on the host after every finished step as ``(step, metrics)``;
        an exception it raises stops the run like a kill would (no extra checkpoint).
      allow_schedule_change: resume even though a field that shapes the learning-rate schedule
        (``train.steps``) differs from the checkpoint's; the change is logged.

    Returns:
      ``{"final_eval", "history", "losses", "steps_run", "start_step", "wall_time_s",
      "total_wall_time_s", "tokens_seen", "difficulty_name", "params"}`` where ``losses`` is
      ``[(step, loss)]`` for every step this invocation ran, ``wall_time_s`` this invocation's
      time, ``total_wall_time_s`` the run's time over all its invocations (up to its last
      checkpoint before this one) and ``params`` the final parameters, as sharded during
      training. The same dict on every process of a multi-host job.

    Raises:
      ValueError: bad config (naming the key), or a workdir checkpoint of another config.
      ScheduleChangeError: (a ValueError) ``train.steps`` differs from the checkpoint's and
        ``allow_schedule_change`` is False.
      WorkdirBusyError: another live process is running in ``workdir``.
      TrainingInterrupted: SIGINT / SIGTERM; stopped after a step, whose checkpoint is saved.
      NonFiniteError: the loss or gradient norm became non-finite (the last good checkpoint
        stays in ``workdir/checkpoints``).
    """
    started = time.perf_counter()
    rc: ResolvedConfig = validate_config(cfg)
    if rc.init.active:   # save (and compare on resume) the architecture the source gave
        cfg = initialization.explicit_model_section(cfg, rc.model)
    workdir = paths.make_directory(paths.run_directory(workdir))
    with WorkdirLock(workdir, enabled=run_logging.is_primary_process()), StopRequests() as stop:
        return _train_locked(cfg, rc, workdir, started, stop, step_callback, allow_schedule_change)


def _train_locked(cfg, rc: ResolvedConfig, workdir, started: float, stop: StopRequests,
                  step_callback, allow_schedule_change: bool) -> dict:
    """The body of :func:`train_and_evaluate`, run while holding the workdir lock."""
    train_cfg = rc.train
    mesh = make_mesh(rc.mesh)
    validate_model_for_mesh(rc.model, mesh)

    model = SleepLM(rc.model, rc.sleep)
    optimizer = make_optimizer(rc.optim, train_cfg.steps)
    train_step = make_train_step(model, optimizer, trainable=rc.optim.trainable)

    shard_index, shard_count = host_shard_info(mesh)
    train_source = data.make_source(rc.task, "train", train_cfg.seed)
    test_source = data.make_source(rc.task, "test", train_cfg.seed)
    dataset = data.make_dataset(train_source, batch_size=train_cfg.batch_size // shard_count,
                                seed=train_cfg.seed, shuffle=True, num_epochs=None,
                                shard_index=shard_index, shard_count=shard_count)
    data_iterator = iter(dataset)

    init_fn = functools.partial(init_train_state, model, optimizer)
    rng = jax.random.PRNGKey(train_cfg.seed)
    example_tokens = jnp.zeros((1, rc.seq_len), jnp.int32)
    abstract_state = jax.eval_shape(init_fn, rng, example_tokens)
    state_shardings = train_state_shardings(abstract_state, mesh, rc.model)

    checkpointer = Checkpointer(workdir / CHECKPOINT_SUBDIR,
                                keep=train_cfg.keep_checkpoints,
                                async_save=train_cfg.async_checkpointing,
                                write_manifests=run_logging.is_primary_process())
    try:
        restored = _restore_latest_intact(
            checkpointer, cfg, with_shardings(abstract_state, state_shardings),
            data_iterator, allow_schedule_change)
        if restored is not None:
            restored_step, state, progress, verified = restored
            prior_wall_time = float(progress.get("wall_time_s", 0.0))
        else:
            restored_step, verified, prior_wall_time = None, False, 0.0
            with jax.set_mesh(mesh):
                if rc.init.active:
                    state = _state_from_source(rc, optimizer, rng, abstract_state, state_shardings)
                else:
                    state = jax.jit(init_fn, out_shardings=state_shardings)(rng, example_tokens)
        start_step = int(jax.device_get(state.step))

        def run_wall_time() -> float:
            return prior_wall_time + time.perf_counter() - started

        def save(step: int) -> None:
            logger.flush()   # TensorBoard is on disk up to every saved step
            checkpointer.save(step, state, data_iterator, cfg,
                              progress={"wall_time_s": run_wall_time()})

        per_step_passes = not rc.sleep.fixed_training_passes
        step_fn = jit_train_step(train_step, state_shardings, mesh,
                                 per_step_passes=per_step_passes)
        eval_step = make_eval_step(model)
        jitted_eval = jax.jit(eval_step, in_shardings=(state_shardings.params,
                                                       batch_sharding(mesh)),
                              out_shardings=replicated(mesh))

        def run_eval(params) -> dict:
            def bound(batch):
                with jax.set_mesh(mesh):
                    return jitted_eval(params, batch)

            def to_device(batch):
                rows = train_cfg.eval_batch_size // shard_count
                local = {k: v[shard_index * rows:(shard_index + 1) * rows] for k, v in batch.items()}
                return make_global_batch(local, mesh)

            return evaluation.evaluate(bound, test_source, train_cfg.eval_examples,
                                       train_cfg.eval_batch_size, to_device)

        tokens_per_step = train_cfg.batch_size * rc.seq_len
        history = read_eval_history(workdir, start_step)
        schedules = learning_rate_schedules(rc.optim, train_cfg.steps)
        header = {"difficulty_name": test_source.difficulty_name, "seq_len": rc.seq_len,
                  "batch_size": train_cfg.batch_size, "passes": rc.sleep.passes}

        def record_eval(step: int, params) -> dict:
            result = run_eval(params)
            entry = {"step": step, "tokens_seen": step * tokens_per_step, **result}
            history.append(entry)
            logger.log_eval(step, result, history)
            return entry

        losses: list[tuple[int, float]] = []
        step = start_step
        evaluated = False
        with RunLogger(workdir, total_steps=train_cfg.steps, start_step=start_step,
                       tokens_per_step=tokens_per_step, progress_bar=train_cfg.progress_bar,
                       description=f"train N={training_label(rc.sleep)} seed={train_cfg.seed}", eval_header=header) as logger:
            logger.write_config(cfg)
            while step < train_cfg.steps:
                stop_request = agreed_stop(stop.requested)   # the same on every process
                if stop_request:
                    if step > start_step and checkpointer.latest_step() != step:
                        save(step)
                    kept = checkpointer.latest_step()
                    by = "" if stop_request == stop.requested else " by another process"
                    raise TrainingInterrupted(
                        f"{stop_request} received{by}: stopped after step {step}; "
                        + (f"checkpoint step {kept} is complete in {checkpointer.directory}"
                           if kept is not None else "no checkpoint was written yet")
                        + "; rerun the same command to resume")
                host_batch = next(data_iterator)
                batch = make_global_batch(
                    {k: host_batch[k] for k in TRAIN_BATCH_KEYS}, mesh)
                if per_step_passes:   # this step's N: a pure function of (seed, step)
                    passes = training_passes(rc, step)
                    state, metrics = step_fn(state, batch, np.asarray(passes, np.int32))
                else:
                    passes = rc.sleep.passes
                    state, metrics = step_fn(state, batch)
                metrics = dict(jax.device_get(metrics), sleep_passes=passes)
                checkpointer.seal_finished()
                if not (metrics["loss_finite"] and metrics["grad_finite"]):
                    raise _non_finite_error(step, metrics, checkpointer, restored_step, verified)
                step += 1
                loss = float(metrics["loss"])
                losses.append((step, loss))
                if step_callback is not None:
                    step_callback(step, metrics)
                if step % train_cfg.log_every == 0 or step == train_cfg.steps:
                    scalars = {k: float(metrics[k]) for k in
                               ("loss", "grad_norm", "token_accuracy")}
                    if per_step_passes:
                        scalars["sleep_passes"] = passes
                    lrs = {name: float(s(step - 1)) for name, s in schedules.items()}
                    logger.log_train(step, scalars, lrs)
                # Evaluate before checkpointing the same step: a run interrupted between the two
                # resumes from an earlier checkpoint and evaluates this step again.
                if train_cfg.eval_every and step % train_cfg.eval_every == 0 \
                        and step < train_cfg.steps:
                    record_eval(step, state.params)
                if train_cfg.checkpoint_every and step % train_cfg.checkpoint_every == 0 \
                        and step < train_cfg.steps:
                    save(step)
            if not history or history[-1]["step"] != step:
                record_eval(step, state.params)
                evaluated = True
            if checkpointer.latest_step() != step:
                save(step)
    finally:
        checkpointer.close()

    # A rerun of a finished run (nothing trained or evaluated) adds nothing to its wall time.
    total_wall_time = run_wall_time() if losses or evaluated else prior_wall_time
    return {"final_eval": history[-1], "history": history, "losses": losses,
            "start_step": start_step, "steps_run": step - start_step,
            "tokens_seen": step * tokens_per_step, "wall_time_s": time.perf_counter() - started,
            "total_wall_time_s": total_wall_time,
            "difficulty_name": test_source.difficulty_name, "params": state.params}


def training_label(sleep_cfg) -> str:
    """N as the progress bar shows it: ``4``, or the law (``uniform:1:6``, ``4 ramped``)."""
    if sleep_cfg.fixed_training_passes:
        return str(sleep_cfg.passes)
    law = str(sleep_cfg.passes) if sleep_cfg.train_passes == "fixed" else sleep_cfg.train_passes
    return law + (" ramped" if sleep_cfg.passes_warmup_fraction else "")


def training_passes(rc: ResolvedConfig, step: int) -> int:
    """N of training step ``step`` (0-based) under ``sleep.train_passes`` and its curriculum."""
    return passes_for_step(rc.sleep.train_pass_law, rc.sleep.passes,
                           rc.sleep.passes_warmup_fraction, rc.train.steps, rc.train.seed, step)


def _state_from_source(rc: ResolvedConfig, optimizer, rng, abstract_state, state_shardings
                       ) -> TrainState:
    """Step 0 of a run with an ``init`` source: its parameters (with any inserted blocks, drawn
    from the key ``init_train_state`` would draw parameters from), a fresh optimiser state."""
    init_rng, state_rng = jax.random.split(rng)
    params = warm_start.initial_params(rc.init, rc.model, init_rng)
    warm_start.check_params_match(params, abstract_state.params, rc.init.source_key)
    params = jax.device_put(params, state_shardings.params)
    return jax.jit(functools.partial(train_state_from_params, optimizer=optimizer),
                   out_shardings=state_shardings)(params, state_rng=state_rng)


def _restore_latest_intact(checkpointer: Checkpointer, cfg, abstract_state, data_iterator,
                           allow_schedule_change: bool):
    """``(step, state, progress, verified)`` of the newest checkpoint that passes its checksums
    and restores to finite arrays, or None if there is none. A damaged newer step is reported
    (step and file) and moved to ``damaged_checkpoints/`` so the run can save it again."""
    for step in reversed(checkpointer.all_steps()):
        try:
            verified = checkpointer.verify(step)
            changes = checkpointer.check_compatible(cfg, step,
                                                    allow_schedule_change=allow_schedule_change)
            state = checkpointer.restore(step, abstract_state, data_iterator)
            progress = checkpointer.progress(step)
        except CheckpointDamagedError as error:
            primary = run_logging.is_primary_process()
            where = checkpointer.quarantine(step) if primary else "(by the primary process)"
            _log.warning("%s; moved it to %s and falling back to the previous checkpoint",
                         error, where)
            continue
        for change in changes:
            _log.warning("resuming from step %d with a changed learning-rate schedule (allowed "
                         "by allow_schedule_change): %s", step, change)
        if not verified:
            _log.warning("checkpoint step %d has no checksums (saved by an older version or a "
                         "run killed while writing them); restored it unverified", step)
        return step, state, progress, verified
    return None


def _non_finite_error(step: int, metrics, checkpointer: Checkpointer, restored_step, verified
                      ) -> NonFiniteError:
    """The error for a non-finite step ``step + 1``; right after a restore, the restored
    checkpoint is suspect and is not called the last good one."""
    bad = [name for name, ok in (("loss", metrics["loss_finite"]),
                                 ("gradient global norm", metrics["grad_finite"])) if not ok]
    head = (f"step {step + 1}: non-finite {' and '.join(bad)} (loss={metrics['loss']}, "
            f"grad_norm={metrics['grad_norm']}); the update was not applied. ")
    if restored_step is not None and step == restored_step:
        return NonFiniteError(
            head + f"This is the first step after restoring checkpoint step {restored_step} "
            f"({'its checksums matched' if verified else 'it had no checksums to verify'}) in "
            f"{checkpointer.directory}: that checkpoint may hold a bad state; try an earlier "
            "one, or a lower optim.muon_lr / optim.adam_lr or optim.clip_norm.")
    kept = checkpointer.latest_step()
    return NonFiniteError(
        head + (f"Last good checkpoint: step {kept} in {checkpointer.directory}."
                if kept is not None else "No checkpoint was written yet.")
        + " Try a lower optim.muon_lr / optim.adam_lr or optim.clip_norm.")
