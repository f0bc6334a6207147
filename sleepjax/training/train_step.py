"""One optimisation step as a pure function ``train_step(state, batch) -> (state, metrics)``.

The loss never materialises full-sequence logits for a :class:`~sleepjax.models.SleepLM`: the
forward stops at the hidden states (``hidden=True``), and the head and cross-entropy run only
at loss positions, in rematerialised chunks (:func:`sleepjax.models.losses.gathered_token_losses`).
This is exact (same loss, accuracy and gradients as the full-logits loss, to float
rounding), so ``full_logits=True`` (the former path) remains only for comparison.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from sleepjax.models.blocks import output_logits
from sleepjax.models.losses import gathered_token_losses
from sleepjax.models.sleep_lm import SleepLM
from sleepjax.parallel.data_parallel import batch_psum, data_parallel
from sleepjax.training.param_groups import freeze_untrainable
from sleepjax.training.state import TrainState

TRAIN_BATCH_KEYS = ("inputs", "targets", "loss_mask")


def _reduce_answer_loss(ce, correct, loss_mask):
    mask = loss_mask.astype(jnp.float32)
    count = jnp.sum(mask)
    denom = jnp.maximum(batch_psum(count), 1.0)
    loss = jnp.sum(ce * mask) / denom
    return loss, (jnp.sum(correct.astype(jnp.float32) * mask) / denom, count)


def answer_loss(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array):
    """Cross-entropy summed over answer tokens divided by their number; also token accuracy.

    Returns ``(loss, (token_accuracy, answer_tokens))``; a batch without answer tokens has
    loss 0 rather than NaN. Inside ``data_parallel`` the inputs are one data
    shard: the sums are local, the divisor is the whole batch's answer-token count, so the
    shards' losses (and their gradients) add up to the whole batch's.
    """
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    correct = jnp.argmax(logits, axis=-1) == targets
    return _reduce_answer_loss(ce, correct, loss_mask)


def _head_params(params):
    return {k: params[k] for k in ("embed", "head", "final_norm") if k in params}


def token_losses(model, params, batch, *, full_logits: bool = False,
                 chunk_positions: int | None = None):
    """``(ce [B, T] f32, correct [B, T] bool)`` of ``model`` on ``batch``.

    ``ce`` is the cross-entropy of ``batch["targets"]`` and ``correct`` whether the argmax
    predicts it. For a :class:`SleepLM` (unless ``full_logits``) both are computed only where
    ``batch["loss_mask"]`` is non-zero (0 / False elsewhere), from the hidden states, in chunks
    of ``chunk_positions`` positions per row (default: ~128 MiB of float32 logits per chunk).
    Otherwise from the full logits ``[B, T, vocab]``, at every position.
    """
    if full_logits or not isinstance(model, SleepLM):
        logits = model.apply({"params": params}, batch["inputs"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                             batch["targets"])
        return ce, jnp.argmax(logits, axis=-1) == batch["targets"]
    h = model.apply({"params": params}, batch["inputs"], hidden=True)
    cfg = model.model_cfg

    def head(head_params, hc):
        return output_logits(head_params, hc, cfg)

    return gathered_token_losses(head, _head_params(params), h, batch["targets"],
                                 batch["loss_mask"], chunk_positions)


def make_train_step(model, optimizer: optax.GradientTransformation, *, full_logits: bool = False,
                    chunk_positions: int | None = None, trainable: Sequence[str] = ()
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Build ``train_step(state, batch)`` for ``model`` (a flax Module) and ``optimizer``.

    The loss is :func:`answer_loss` of :func:`token_losses` (``full_logits`` /
    ``chunk_positions`` go there): for a :class:`SleepLM` no full-sequence logits exist.

    ``batch`` holds ``inputs``, ``targets`` (int32 [B, T]) and ``loss_mask`` (float32 [B, T]).
    If the loss or the gradient norm is not finite, the returned state is the input state
    unchanged and ``metrics["finite"]`` is False: the host loop stops the run and the bad
    update is never applied (nor saved). Under a mesh with a ``data`` axis the loss and
    gradients are computed per data shard and summed once (``data_parallel``).

    ``trainable``: ``optim.trainable``'s patterns; the other parameters are constants of the
    loss (``stop_gradient``), so their weight gradients are never computed (their update is
    zero anyway: the optimizer freezes them) and the gradient norm is the trainable ones'.
    """

    def loss_fn(params, batch):
        if trainable:
            params = freeze_untrainable(params, trainable)
        ce, correct = token_losses(model, params, batch, full_logits=full_logits,
                                   chunk_positions=chunk_positions)
        return _reduce_answer_loss(ce, correct, batch["loss_mask"])

    def shard_loss_and_grads(params, batch):
        (loss, (token_accuracy, answer_tokens)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(params, batch)
        return batch_psum((loss, token_accuracy, answer_tokens, grads))

    loss_and_grads = data_parallel(shard_loss_and_grads)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng, _ = jax.random.split(state.rng)  # the model is deterministic; the stream still advances
        loss, token_accuracy, answer_tokens, grads = loss_and_grads(state.params, batch)
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


def make_eval_step(model, *, full_logits: bool = False, chunk_positions: int | None = None
                   ) -> Callable[[dict, dict], dict]:
    """Build ``eval_step(params, batch) -> {"correct": bool [B, T], "token_loss": f32 [B, T],
    "loss_sum", "answer_tokens"}``; ``token_loss`` is the cross-entropy at answer positions (0
    elsewhere), so the host can pool it by difficulty. ``correct`` is meaningful at answer
    positions (``loss_mask != 0``) only: a :class:`SleepLM` computes the head nowhere else (see
    :func:`token_losses`) and reports False there."""

    def eval_step(params, batch):
        ce, correct = token_losses(model, params, batch, full_logits=full_logits,
                                   chunk_positions=chunk_positions)
        mask = batch["loss_mask"].astype(jnp.float32)
        return {"correct": correct, "token_loss": ce * mask, "loss_sum": jnp.sum(ce * mask),
                "answer_tokens": jnp.sum(mask)}

    return eval_step
