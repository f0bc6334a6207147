"""The attention mixer: one function for the window form (training, sleep passes, prefill) and
the cached form (streaming wake steps, the baseline's decode).

Keys are stored *after* RoPE, rotated with their position counted from the start of their
window (0..L-1). Under sliding eviction the previous window's last ``L-1`` keys are re-rotated
by ``-L`` when they cross the boundary (:func:`shift_to_previous_window`), so every relative
offset seen by RoPE is the true token distance.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from sleepjax.models.config import ModelConfig
from sleepjax.models.layers import compute_dtype, dense, rope

_NEG_INF = -1e30  # finite "minus infinity": a row always has at least its own token


class KVCache(NamedTuple):
    """Rotated keys and values ``[B, slots, H, D]``; slot ``s`` holds the token at position ``s``."""

    keys: jax.Array
    values: jax.Array


def zero_kv_cache(cfg: ModelConfig, batch_size: int, slots: int) -> KVCache:
    shape = (batch_size, slots, cfg.attn_heads, cfg.attn_head_dim)
    dt = compute_dtype(cfg)
    return KVCache(jnp.zeros(shape, dt), jnp.zeros(shape, dt))


def _attend(q, keys, values, mask, out_dtype):
    """q ``[B,Tq,H,D]``, keys/values ``[B,Tk,H,D]``, mask ``[Tq,Tk]`` bool (True = visible)."""
    scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, keys, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask[None, None], scores, _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(values.dtype), values,
                      preferred_element_type=jnp.float32).astype(out_dtype)


def _project_qkv(p, x, cfg):
    dt = compute_dtype(cfg)
    bsz, seq, _ = x.shape
    shape = (bsz, seq, cfg.attn_heads, cfg.attn_head_dim)
    return tuple(dense(x, p[name], dt).reshape(shape) for name in ("wq", "wk", "wv"))


def attention(p, x, cache: KVCache | None, position, cfg: ModelConfig, previous=None):
    """Causal attention of ``T`` new tokens at positions ``position .. position+T-1``.

    Args:
      p: ``attn`` params ``{wq, wk, wv: [d, H*D], wo: [H*D, d]}``.
      x: normalised input ``[B, T, d]``.
      cache: None for the window form (``x`` is the start of a window, ``position`` 0: the
        tokens attend to each other only), or a :class:`KVCache` whose slots ``< position``
        hold earlier tokens (the new ones are written at ``position``; later slots are ignored).
      position: int (or int32 scalar), position of ``x[:, 0]``.
      previous: sliding eviction only: ``(keys, values, visible)`` with the previous window's
        last ``L-1`` tokens ``[B, L-1, H, D]`` (keys rotated to positions ``-(L-1)..-1``) and a
        bool scalar, False before the first window boundary. None: nothing before the window.

    Returns ``(out [B, T, d], cache)``: the cache after ``x`` (window form: ``x``'s own rotated
    keys and values, ``[B, T, H, D]``).
    """
    dt = compute_dtype(cfg)
    bsz, seq, _ = x.shape
    q, k, v = _project_qkv(p, x, cfg)
    pos = position + jnp.arange(seq)
    q, k = rope(q, pos, cfg.rope_theta), rope(k, pos, cfg.rope_theta)
    if cache is None:
        cache = KVCache(k, v)
    else:
        cache = KVCache(*(jax.lax.dynamic_update_slice_in_dim(old, new.astype(old.dtype), position, 1)
                          for old, new in ((cache.keys, k), (cache.values, v))))
    keys, values = cache.keys.astype(dt), cache.values.astype(dt)
    mask = jnp.arange(keys.shape[1])[None, :] <= pos[:, None]
    if previous is not None:
        prev_keys, prev_values, visible = previous
        # prev slot s holds position s+1-L; query i sees it iff the distance i+L-1-s <= L-1.
        prev_mask = (jnp.arange(prev_keys.shape[1])[None, :] >= pos[:, None]) & visible
        keys = jnp.concatenate([prev_keys.astype(dt), keys], axis=1)
        values = jnp.concatenate([prev_values.astype(dt), values], axis=1)
        mask = jnp.concatenate([prev_mask, mask], axis=1)
    o = _attend(q, keys, values, mask, dt)
    return dense(o.reshape(bsz, seq, -1), p["wo"], dt), cache


def shift_to_previous_window(k, v, cfg: ModelConfig, window: int):
    """Keys/values a window hands to the next one under sliding eviction.

    Keeps the last ``L-1`` tokens and re-rotates their keys by ``-L`` so that positions are
    counted from the start of the next window (``-(L-1)..-1``).
    """
    k_tail, v_tail = k[:, 1:], v[:, 1:]
    shift = jnp.full((k_tail.shape[1],), -window, jnp.int32)
    return rope(k_tail, shift, cfg.rope_theta), v_tail
