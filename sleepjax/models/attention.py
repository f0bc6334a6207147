"""The attention mixer: one function for the window form (training, sleep passes, prefill) and
the cached form (streaming wake steps, the baseline's decode).

Options (``ModelConfig``): grouped-query attention (``attn_kv_heads``: the cache holds the
key/value heads only), a per-feature output gate (``attn_output_gate``), per-head q/k RMSNorm
before RoPE (``attn_qk_norm``), partial rotary (``rope_fraction``) or no positions at all
(``position_encoding="none"``).

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
from sleepjax.models.layers import compute_dtype, dense, norm, rope

_NEG_INF = -1e30  # finite "minus infinity": a row always has at least its own token


class KVCache(NamedTuple):
    """Rotated keys and values ``[B, slots, Hkv, D]``; slot ``s`` holds the token at position ``s``."""

    keys: jax.Array
    values: jax.Array


def zero_kv_cache(cfg: ModelConfig, batch_size: int, slots: int) -> KVCache:
    shape = (batch_size, slots, cfg.attn_kv_heads, cfg.attn_head_dim)
    dt = compute_dtype(cfg)
    return KVCache(jnp.zeros(shape, dt), jnp.zeros(shape, dt))


def _attend(q, keys, values, mask, out_dtype):
    """q ``[B,Tq,H,D]``, keys/values ``[B,Tk,Hkv,D]``, mask ``[Tq,Tk]`` bool (True = visible).

    Query head ``h`` reads key/value head ``h // (H / Hkv)`` (grouped-query attention, the
    ``repeat_kv`` order of transformers), without materialising repeated keys.
    """
    bsz, tq, heads, dim = q.shape
    kv_heads = keys.shape[2]
    q = q.reshape(bsz, tq, kv_heads, heads // kv_heads, dim)
    scale = dim ** -0.5
    scores = jnp.einsum("bqhgd,bkhd->bhgqk", q, keys, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask[None, None, None], scores, _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", probs.astype(values.dtype), values,
                     preferred_element_type=jnp.float32)
    return out.reshape(bsz, tq, heads, dim).astype(out_dtype)


def _project_qkv(p, x, cfg):
    dt = compute_dtype(cfg)
    bsz, seq, _ = x.shape
    q = dense(x, p["wq"], dt).reshape(bsz, seq, cfg.attn_heads, cfg.attn_head_dim)
    k, v = (dense(x, p[name], dt).reshape(bsz, seq, cfg.attn_kv_heads, cfg.attn_head_dim)
            for name in ("wk", "wv"))
    if cfg.attn_qk_norm:
        q, k = norm(q, p["q_norm"], cfg), norm(k, p["k_norm"], cfg)
    return q, k, v


def encode_positions(x, positions, cfg: ModelConfig):
    """RoPE (full or partial) of ``x [B, T, H, D]`` at ``positions [T]``; identity without one."""
    if cfg.position_encoding == "none":
        return x
    return rope(x, positions, cfg.rope_theta, cfg.rotary_dim)


def attention(p, x, cache: KVCache | None, position, cfg: ModelConfig, previous=None):
    """Causal attention of ``T`` new tokens at positions ``position .. position+T-1``.

    Args:
      p: ``attn`` params ``{wq: [d, H*D], wk, wv: [d, Hkv*D], wo: [H*D, d]}`` and, by option,
        ``wg [d, H*D]``, ``q_norm``, ``k_norm``.
      x: normalised input ``[B, T, d]``.
      cache: None for the window form (``x`` is the start of a window, ``position`` 0: the
        tokens attend to each other only), or a :class:`KVCache` whose slots ``< position``
        hold earlier tokens (the new ones are written at ``position``; later slots are ignored).
      position: int (or int32 scalar), position of ``x[:, 0]``.
      previous: sliding eviction only: ``(keys, values, visible)`` with the previous window's
        last ``L-1`` tokens ``[B, L-1, Hkv, D]`` (keys rotated to positions ``-(L-1)..-1``) and a
        bool scalar, False before the first window boundary. None: nothing before the window.

    Returns ``(out [B, T, d], cache)``: the cache after ``x`` (window form: ``x``'s own rotated
    keys and values, ``[B, T, H, D]``).
    """
    dt = compute_dtype(cfg)
    bsz, seq, _ = x.shape
    q, k, v = _project_qkv(p, x, cfg)
    pos = position + jnp.arange(seq)
    q, k = encode_positions(q, pos, cfg), encode_positions(k, pos, cfg)
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
    o = _attend(q, keys, values, mask, dt).reshape(bsz, seq, -1)
    if cfg.attn_output_gate:
        o = o * jax.nn.sigmoid(dense(x, p["wg"], dt))
    return dense(o, p["wo"], dt), cache


def shift_to_previous_window(k, v, cfg: ModelConfig, window: int):
    """Keys/values a window hands to the next one under sliding eviction.

    Keeps the last ``L-1`` tokens and re-rotates their keys by ``-L`` so that positions are
    counted from the start of the next window (``-(L-1)..-1``).
    """
    k_tail, v_tail = k[:, 1:], v[:, 1:]
    shift = jnp.full((k_tail.shape[1],), -window, jnp.int32)
    return encode_positions(k_tail, shift, cfg), v_tail
