"""One optimisation step as a pure function ``train_step(state, batch[, passes]) -> (state, metrics)``,
and the evaluation step.

The loss is :mod:`sleepjax.training.loss`'s: for a :class:`~sleepjax.models.SleepLM` no
full-sequence logits exist (head and cross-entropy at loss positions only).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from sleepjax.models.sleep_lm import inference_plan
from sleepjax.parallel.data_parallel import batch_psum, data_parallel
from sleepjax.training.loss import reduce_answer_loss, token_losses
from sleepjax.training.param_groups import freeze_untrainable
from sleepjax.training.state import TrainState

TRAIN_BATCH_KEYS = ("inputs", "targets", "loss_mask")


def make_train_step(model, optimizer: optax.GradientTransformation, *,
                    chunk_positions: int | None = None, trainable: Sequence[str] = ()
                    ) -> Callable[..., tuple[TrainState, dict]]:
    """Build ``train_step(state, batch, passes=None)`` for ``model`` (a flax Module) and ``optimizer``.

    The loss is :func:`~sleepjax.training.loss.reduce_answer_loss` of
    :func:`~sleepjax.training.loss.token_losses` (``chunk_positions`` goes there).

    ``batch`` holds ``inputs``, ``targets`` (int32 [B, T]) and ``loss_mask`` (float32 [B, T]).
    ``passes``: this step's number of sleep passes N as an int32 scalar (a per-step N drawn by
    the host from ``sleep.train_passes``; one compiled program serves every N), or None for
    ``sleep.passes``. If the loss or the gradient norm is not finite, the returned state is the
    input state unchanged and ``metrics["finite"]`` is False: the host loop stops the run and
    the bad update is never applied (nor saved). Under a mesh with a ``data`` axis the loss and
    gradients are computed per data shard and summed once (``data_parallel``).

    ``trainable``: ``optim.trainable``'s patterns; the other parameters are constants of the
    loss (``stop_gradient``), so their weight gradients are never computed (their update is
    zero anyway: the optimizer freezes them) and the gradient norm is the trainable ones'.
    """

    def loss_fn(params, batch, passes):
        if trainable:
            params = freeze_untrainable(params, trainable)
        ce, correct, _ = token_losses(model, params, batch, passes=passes,
                                      chunk_positions=chunk_positions)
        return reduce_answer_loss(ce, correct, batch["loss_mask"])

    def shard_loss_and_grads(params, batch, passes=None):
        (loss, (token_accuracy, answer_tokens)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(params, batch, passes)
        return batch_psum((loss, token_accuracy, answer_tokens, grads))

    def train_step(state: TrainState, batch: dict, passes=None) -> tuple[TrainState, dict]:
        rng, _ = jax.random.split(state.rng)  # the model is deterministic; the stream still advances
        if passes is None:
            per_shard = shard_loss_and_grads
        else:
            def per_shard(params, batch):
                return shard_loss_and_grads(params, batch, passes)
        loss, token_accuracy, answer_tokens, grads = data_parallel(per_shard)(state.params, batch)
        grad_norm = optax.tree.norm(grads)
        loss_finite = jnp.isfinite(loss)
        grad_finite = jnp.isfinite(grad_norm)
        finite = loss_finite & grad_finite
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        stepped = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), stepped, state)
        metrics = {"loss": loss, "grad_norm": grad_norm, "token_accuracy": token_accuracy,
                   "answer_tokens": answer_tokens, "loss_finite": loss_finite,
                   "grad_finite": grad_finite}
        return new_state, metrics

    return train_step


def make_eval_step(model, *, chunk_positions: int | None = None) -> Callable[[dict, dict], dict]:
    """Build ``eval_step(params, batch) -> {"correct": bool [B, T], "token_loss": f32 [B, T],
    "loss_sum", "answer_tokens", "sleep_passes": int32 [B, W]}``.

    ``token_loss`` is the cross-entropy at answer positions (0 elsewhere), so the host can pool
    it by difficulty. ``correct`` is meaningful at answer positions (``loss_mask != 0``) only:
    a :class:`SleepLM` computes the head nowhere else and reports False there.
    ``sleep_passes``: the passes each row slept in each of its sleeping windows (evaluation
    runs ``sleep.passes``, stopping early per row under ``sleep.adaptive_tol``).
    """
    plan = inference_plan(model.sleep_cfg) if hasattr(model, "sleep_cfg") else None

    def eval_step(params, batch):
        ce, correct, used = token_losses(model, params, batch, plan=plan,
                                         chunk_positions=chunk_positions)
        mask = batch["loss_mask"].astype(jnp.float32)
        return {"correct": correct, "token_loss": ce * mask, "loss_sum": jnp.sum(ce * mask),
                "answer_tokens": jnp.sum(mask), "sleep_passes": used}

    return eval_step
