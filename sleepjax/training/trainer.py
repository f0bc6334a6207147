"""The training job: config -> trained, evaluated, checkpointed model in a workdir.

``train_and_evaluate(cfg, workdir)`` validates the whole config first, builds the mesh, data,
model and optimiser, resumes from the workdir's latest checkpoint if there is one (refusing if
it was written by a different config), then trains, evaluating every ``train.eval_every``
steps and at the end. Workdir layout::

    config.json, config.txt   resolved config
    checkpoints/<step>/       orbax: state, data iterator, config
    tensorboard/              event files
    train_log.jsonl           one line per logged step (loss, grad norm, token accuracy, lr)
    eval.json                 evaluation history (step, tokens seen, accuracy by difficulty)

In a multi-host job every process runs ``train_and_evaluate``: all of them train, evaluate
(collectives) and call the checkpointer (orbax coordinates the multi-host save), but only the
primary process writes the other files (see :class:`~sleepjax.training.logging.RunLogger`).
"""

from __future__ import annotations

import functools
import os
import time
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sleepjax import data
from sleepjax.models import SleepLM
from sleepjax.parallel.data_parallel import jit_train_step
from sleepjax.parallel.logical_axes import replicated, with_shardings
from sleepjax.parallel.mesh import make_mesh, validate_model_for_mesh
from sleepjax.parallel.multihost import batch_sharding, host_shard_info, make_global_batch
from sleepjax.parallel.state_shardings import train_state_shardings
from sleepjax.training import evaluate as evaluation
from sleepjax.training.checkpointing import CHECKPOINT_SUBDIR, Checkpointer
from sleepjax.training.config import ResolvedConfig, validate_config
from sleepjax.training.logging import RunLogger, read_eval_history
from sleepjax.training.optimizer import make_optimizer, warmup_stable_decay
from sleepjax.training.state import init_train_state
from sleepjax.training.train_step import TRAIN_BATCH_KEYS, make_eval_step, make_train_step


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss or gradient; the bad update was not applied or saved."""


def train_and_evaluate(cfg, workdir: str, *,
                       step_callback: Callable[[int, Mapping[str, float]], None] | None = None
                       ) -> dict:
    """Train and evaluate the experiment ``cfg`` in ``workdir``; resume if it holds a checkpoint.

    Args:
      cfg: experiment ``ConfigDict`` (see :mod:`sleepjax.training.config`).
      workdir: output directory (created).
      step_callback: called on the host after every finished step as ``(step, metrics)``;
        an exception it raises stops the run like a kill would (no extra checkpoint).

    Returns:
      ``{"final_eval", "history", "losses", "steps_run", "start_step", "wall_time_s",
      "tokens_seen", "difficulty_name", "params"}`` where ``losses`` is ``[(step, loss)]`` for
      every step this invocation ran and ``params`` are the final (trained) parameters, as
      sharded during training. The same dict on every process of a multi-host job.

    Raises:
      ValueError: bad config (naming the key), or a workdir checkpoint of another config.
      NonFiniteError: the loss or gradient norm became non-finite (the last good checkpoint
        stays in ``workdir/checkpoints``).
    """
    started = time.perf_counter()
    rc: ResolvedConfig = validate_config(cfg)
    train_cfg = rc.train
    mesh = make_mesh(rc.mesh)
    validate_model_for_mesh(rc.model, mesh)
    os.makedirs(workdir, exist_ok=True)

    model = SleepLM(rc.model, rc.sleep)
    optimizer = make_optimizer(rc.optim, train_cfg.steps)
    train_step = make_train_step(model, optimizer)

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

    checkpointer = Checkpointer(os.path.join(workdir, CHECKPOINT_SUBDIR),
                                keep=train_cfg.keep_checkpoints,
                                async_save=train_cfg.async_checkpointing)
    try:
        latest = checkpointer.latest_step()
        if latest is not None:
            checkpointer.check_compatible(cfg, latest)
            state = checkpointer.restore(
                latest, with_shardings(abstract_state, state_shardings), data_iterator)
        else:
            with jax.set_mesh(mesh):
                state = jax.jit(init_fn, out_shardings=state_shardings)(rng, example_tokens)
        start_step = int(jax.device_get(state.step))

        step_fn = jit_train_step(train_step, state_shardings, mesh)
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
        schedules = {name: warmup_stable_decay(peak, train_cfg.steps, rc.optim.warmup_fraction,
                                               rc.optim.decay_fraction, rc.optim.min_lr_ratio)
                     for name, peak in (("muon", rc.optim.muon_lr), ("adamw", rc.optim.adam_lr))}
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
        with RunLogger(workdir, total_steps=train_cfg.steps, start_step=start_step,
                       tokens_per_step=tokens_per_step, progress_bar=train_cfg.progress_bar,
                       description=f"train N={rc.sleep.passes}", eval_header=header) as logger:
            logger.write_config(cfg)
            while step < train_cfg.steps:
                host_batch = next(data_iterator)
                batch = make_global_batch(
                    {k: host_batch[k] for k in TRAIN_BATCH_KEYS}, mesh)
                state, metrics = step_fn(state, batch)
                metrics = jax.device_get(metrics)
                if not (metrics["loss_finite"] and metrics["grad_finite"]):
                    bad = [name for name, ok in (("loss", metrics["loss_finite"]),
                                                 ("gradient global norm", metrics["grad_finite"]))
                           if not ok]
                    kept = checkpointer.latest_step()
                    raise NonFiniteError(
                        f"step {step + 1}: non-finite {' and '.join(bad)} (loss={metrics['loss']}, "
                        f"grad_norm={metrics['grad_norm']}); the update was not applied. "
                        + (f"Last good checkpoint: step {kept} in {checkpointer.directory}."
                           if kept is not None else "No checkpoint was written yet.")
                        + " Try a lower optim.muon_lr / optim.adam_lr or optim.clip_norm.")
                step += 1
                loss = float(metrics["loss"])
                losses.append((step, loss))
                if step_callback is not None:
                    step_callback(step, metrics)
                if step % train_cfg.log_every == 0 or step == train_cfg.steps:
                    scalars = {k: float(metrics[k]) for k in
                               ("loss", "grad_norm", "token_accuracy")}
                    lrs = {name: float(s(step - 1)) for name, s in schedules.items()}
                    logger.log_train(step, scalars, lrs)
                if train_cfg.checkpoint_every and step % train_cfg.checkpoint_every == 0 \
                        and step < train_cfg.steps:
                    checkpointer.save(step, state, data_iterator, cfg)
                if train_cfg.eval_every and step % train_cfg.eval_every == 0 \
                        and step < train_cfg.steps:
                    record_eval(step, state.params)
            if checkpointer.latest_step() != step:
                checkpointer.save(step, state, data_iterator, cfg)
            if not history or history[-1]["step"] != step:
                record_eval(step, state.params)
    finally:
        checkpointer.close()

    return {"final_eval": history[-1], "history": history, "losses": losses,
            "start_step": start_step, "steps_run": step - start_step,
            "tokens_seen": step * tokens_per_step, "wall_time_s": time.perf_counter() - started,
            "difficulty_name": test_source.difficulty_name, "params": state.params}
