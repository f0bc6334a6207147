"""The loss, in one place: masked next-token cross-entropy at answer positions (Algorithm 1's
MaskedCE), averaged over the batch's answer tokens.

:func:`token_losses` is what training and evaluation compute: for a
:class:`~sleepjax.models.SleepLM` the forward stops at the hidden states and
:func:`gathered_token_losses` applies the head and the cross-entropy only at loss positions, in
rematerialised chunks (no full-sequence logits exist; exact to float rounding). Models without
that split (the full-attention baseline) go through :func:`full_logits_token_losses`, which is
also the reference the gathered form is tested against. :func:`reduce_answer_loss` turns
per-token losses into the loss, the token accuracy and the answer-token count.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from sleepjax.models.blocks import output_logits
from sleepjax.models.sleep_lm import SleepLM, forward_hidden_and_passes, training_plan
from sleepjax.parallel.data_parallel import batch_psum


def reduce_answer_loss(ce, correct, loss_mask):
    """``(loss, (token_accuracy, answer_tokens))`` from per-token ``ce`` / ``correct`` [B, T].

    The loss is the cross-entropy summed over answer tokens (``loss_mask != 0``) divided by
    their number (0, not NaN, without any). Inside ``data_parallel`` the inputs are one data
    shard: the sums are local and the divisor is the whole batch's answer-token count, so the
    shards' losses (and gradients) add up to the whole batch's.
    """
    mask = loss_mask.astype(jnp.float32)
    count = jnp.sum(mask)
    denom = jnp.maximum(batch_psum(count), 1.0)
    loss = jnp.sum(ce * mask) / denom
    return loss, (jnp.sum(correct.astype(jnp.float32) * mask) / denom, count)


def full_logits_token_losses(logits, targets):
    """``(ce [B, T] f32, correct [B, T] bool)`` at every position of full ``logits [B, T, V]``."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    return ce, jnp.argmax(logits, axis=-1) == targets


def _head_params(params):
    return {k: params[k] for k in ("embed", "head", "final_norm") if k in params}


def token_losses(model, params, batch, *, passes=None, plan=None,
                 chunk_positions: int | None = None):
    """``(ce [B, T] f32, correct [B, T] bool, sleep_passes [B, W] int32)`` of ``model`` on ``batch``.

    ``ce`` is the cross-entropy of ``batch["targets"]`` and ``correct`` whether the argmax
    predicts it. For a :class:`SleepLM` both are computed only where ``batch["loss_mask"]`` is
    non-zero (0 / False elsewhere), from the hidden states, in chunks of ``chunk_positions``
    positions per row (default: ~128 MiB of float32 logits per chunk); ``passes`` (this step's
    N, possibly traced) and ``plan`` (default: the training plan) go to the forward, and
    ``sleep_passes`` holds the passes each row slept per sleeping window. Other models compute
    the full logits ``[B, T, vocab]`` (every position; ``sleep_passes`` is ``[B, 0]``).
    """
    if not isinstance(model, SleepLM):
        logits = model.apply({"params": params}, batch["inputs"])
        ce, correct = full_logits_token_losses(logits, batch["targets"])
        return ce, correct, jnp.zeros((ce.shape[0], 0), jnp.int32)
    cfg, sleep_cfg = model.model_cfg, model.sleep_cfg
    plan = training_plan(sleep_cfg) if plan is None else plan
    h, used = forward_hidden_and_passes(params, batch["inputs"], cfg, sleep_cfg, passes, plan)

    def head(head_params, hc):
        return output_logits(head_params, hc, cfg)

    ce, correct = gathered_token_losses(head, _head_params(params), h, batch["targets"],
                                        batch["loss_mask"], chunk_positions)
    return ce, correct, used


# Float32 logits held at once by :func:`gathered_token_losses` (per chunk of positions):
# 2**25 elements = 128 MiB, e.g. 128 positions of a 248k vocabulary, or every position of a
# small-vocabulary task (one chunk).
LOGIT_CHUNK_ELEMENTS = 1 << 25


def default_chunk_positions(batch_size: int, seq_len: int, vocab_size: int,
                            budget: int = LOGIT_CHUNK_ELEMENTS) -> int:
    """Positions per row in one chunk so that ``batch x chunk x vocab <= budget`` (at least 1,
    at most ``seq_len``; a multiple of 8 when above 8)."""
    chunk = max(1, budget // max(1, batch_size * vocab_size))
    if chunk > 8:
        chunk -= chunk % 8
    return min(seq_len, chunk)


def gathered_token_losses(head, head_params, h, targets, mask, chunk_positions: int | None = None):
    """Cross-entropy and argmax-correctness where ``mask`` is non-zero, without full logits.

    The head runs only on loss positions. Each row's positions are stably sorted so that those
    with ``mask != 0`` come first (in order) and cut into chunks of ``chunk_positions`` per
    row; a loop over the first ``ceil(A / chunk)`` chunks (``A``: loss positions of the fullest
    row, a run-time count) gathers the chunk's hidden states, applies ``head`` and the
    cross-entropy. The gradient is a custom VJP that runs the same loop again, recomputing each
    chunk's logits and pulling ``softmax - onehot`` back through ``head`` (accumulating the
    head's parameter gradient, scattering the hidden-state gradient). So at no time are more
    than one chunk's ``[B, chunk, vocab]`` logits alive, chunks without loss cost nothing, and
    the result is exact: every position with weight is computed (a permutation, nothing
    dropped), with the same cross-entropy as the full logits' to float rounding.

    Args:
      head: ``head(head_params, h_chunk [B, C, d]) -> logits [B, C, vocab]`` (any float dtype;
        used in float32), differentiable in ``head_params`` and ``h_chunk``.
      head_params: pytree of the head's parameters (gradients flow to it).
      h: ``[B, T, d]`` hidden states (gradients flow to it); ``targets``: ``[B, T]`` int;
      mask: ``[B, T]`` (only ``mask != 0`` matters here; weight the result yourself).
      chunk_positions: static positions per row and chunk (default
        :func:`default_chunk_positions` for the head's vocabulary, found by shape evaluation).

    Returns ``(ce [B, T] f32, correct [B, T] bool)``: the cross-entropy (unweighted) and
    ``argmax == target`` at positions where ``mask != 0``; 0 / False elsewhere.
    """
    bsz, seq = targets.shape
    if tuple(h.shape[:2]) != (bsz, seq) or tuple(mask.shape) != (bsz, seq):
        raise ValueError(f"h {tuple(h.shape)}, targets {tuple(targets.shape)} and mask "
                         f"{tuple(mask.shape)} must share [B, T]")
    if chunk_positions is None:
        vocab = jax.eval_shape(head, head_params, h[:, :1]).shape[-1]
        chunk_positions = default_chunk_positions(bsz, seq, vocab)
    chunk = max(1, min(int(chunk_positions), seq))
    return _gathered(head, chunk, head_params, h, targets.astype(jnp.int32), mask != 0)


def _plan(targets, active, chunk):
    """The sorted, chunked positions: ``(order [B, T], idx, act, tgt [B, n, C], needed)``."""
    bsz, seq = targets.shape
    n_chunks = -(-seq // chunk)
    pad = ((0, 0), (0, n_chunks * chunk - seq))
    order = jnp.argsort(jnp.logical_not(active), axis=1, stable=True).astype(jnp.int32)

    def chunked(x):
        return jnp.pad(x, pad).reshape(bsz, n_chunks, chunk)

    idx = chunked(order)
    act = chunked(jnp.take_along_axis(active, order, axis=1))
    tgt = chunked(jnp.take_along_axis(targets, order, axis=1))
    most = jnp.max(jnp.sum(active, axis=1, dtype=jnp.int32))
    needed = (most + chunk - 1) // chunk
    return order, idx, act, tgt, needed


def _chunk(x, i):
    return jax.lax.dynamic_index_in_dim(x, i, axis=1, keepdims=False)


def _chunk_logits(head, head_params, h, idx):
    hc = jnp.take_along_axis(h, idx[..., None], axis=1)              # [B, C, d]
    return head(head_params, hc).astype(jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _gathered(head, chunk, head_params, h, targets, active):
    return _gathered_fwd(head, chunk, head_params, h, targets, active)[0]


def _gathered_fwd(head, chunk, head_params, h, targets, active):
    bsz, seq = targets.shape
    order, idx, act, tgt, needed = _plan(targets, active, chunk)

    def body(i, bufs):
        ce_buf, ok_buf = bufs
        a, t = _chunk(act, i), _chunk(tgt, i)
        logits = _chunk_logits(head, head_params, h, _chunk(idx, i))
        ce = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, t[..., None], -1)[..., 0]
        ok = (jnp.argmax(logits, axis=-1) == t) & a
        return (jax.lax.dynamic_update_index_in_dim(ce_buf, jnp.where(a, ce, 0.0), i, 1),
                jax.lax.dynamic_update_index_in_dim(ok_buf, ok, i, 1))

    bufs = (jnp.zeros(act.shape, jnp.float32), jnp.zeros(act.shape, bool))
    ce, ok = jax.lax.fori_loop(0, needed, body, bufs)
    inverse = jnp.argsort(order, axis=1)

    def unsorted(x):
        return jnp.take_along_axis(x.reshape(bsz, -1)[:, :seq], inverse, axis=1)

    return (unsorted(ce), unsorted(ok)), (head_params, h, order, idx, act, tgt, needed)


def _gathered_bwd(head, chunk, residuals, cotangents):
    head_params, h, order, idx, act, tgt, needed = residuals
    g_ce = cotangents[0].astype(jnp.float32)
    bsz, n_chunks, _ = idx.shape
    g = jnp.pad(jnp.take_along_axis(g_ce, order, axis=1),
                ((0, 0), (0, idx.shape[1] * chunk - g_ce.shape[1]))).reshape(bsz, n_chunks, chunk)
    rows = jnp.arange(bsz)[:, None]

    def body(i, grads):
        d_params, d_h = grads
        a, t, gi, ix = _chunk(act, i), _chunk(tgt, i), _chunk(g, i), _chunk(idx, i)
        hc = jnp.take_along_axis(h, ix[..., None], axis=1)
        logits, pullback = jax.vjp(lambda p, x: head(p, x).astype(jnp.float32), head_params, hc)
        probs = jax.nn.softmax(logits, axis=-1)
        onehot = jnp.arange(logits.shape[-1]) == t[..., None]
        d_logits = (probs - onehot) * jnp.where(a, gi, 0.0)[..., None]
        dp, dhc = pullback(d_logits)
        d_params = jax.tree.map(jnp.add, d_params, dp)
        # Positions of a row are distinct except the padding's copies of position 0, whose
        # gradient is exactly 0: an add in h's dtype sums nothing else.
        d_h = d_h.at[rows, ix].add(dhc.astype(d_h.dtype))
        return d_params, d_h

    zeros = (jax.tree.map(jnp.zeros_like, head_params), jnp.zeros_like(h))
    d_params, d_h = jax.lax.fori_loop(0, needed, body, zeros)
    return d_params, d_h, None, None


_gathered.defvjp(_gathered_fwd, _gathered_bwd)
