"""Building blocks of the hybrid stack as pure functions of explicit parameter dicts.

Every function here takes the parameter sub-dict of one module (as created by the linen
modules in :mod:`sleepjax.models.params`) and explicit states, and returns new states; nothing
is stored. Two forms exist for each sequence mixer:

* a *window* form that processes ``T <= L`` tokens of one window in parallel (training forward
  and the sleep passes), and
* a *step* form that processes one token against a cache (streaming wake).

They compute the same function; ``tests/test_inference_stream.py`` checks that.

Conventions:
* activations ``[B, T, d]`` in the compute dtype (``ModelConfig.dtype``); parameters are
  float32 and cast at use; fast weights S and decays are float32 always.
* attention keys are stored *after* RoPE, rotated with their position counted from the start
  of their window (0..L-1). Under sliding eviction the previous window's keys are re-rotated by
  ``-L`` when they cross the boundary, so every relative offset seen by RoPE is the true token
  distance.
* the causal short convolution of a GDN layer restarts from zeros at every window start and in
  every pass (like the KV cache under hard eviction): only S crosses a window boundary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sleepjax.models.config import ModelConfig
from sleepjax.ops import gated_delta_rule
from sleepjax.ops.gdr_recurrent import recurrent_step

_NEG_INF = -1e30  # finite "minus infinity": a row always has at least its own token


def compute_dtype(cfg: ModelConfig):
    return jnp.dtype(cfg.dtype)


def rms_norm(x, scale, eps):
    """RMSNorm over the last axis, computed in float32, returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y * scale.astype(jnp.float32)).astype(x.dtype)


def rope(x, positions, theta):
    """Rotary embedding (rotate-half convention). x ``[B, T, H, D]``, positions ``[T]``.

    Rotations compose: ``rope(rope(x, p), q) == rope(x, p + q)``, which the sliding-window
    boundary shift relies on.
    """
    half = x.shape[-1] // 2
    freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[:, None] * freqs[None, :]          # [T, half]
    cos, sin = jnp.cos(angles)[None, :, None, :], jnp.sin(angles)[None, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., :half], x32[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def _dense(x, w, dtype):
    return jnp.dot(x.astype(dtype), w.astype(dtype))


# ----------------------------------------------------------------------------- MLP

def mlp(p, x, cfg: ModelConfig):
    """SwiGLU: ``w_down(silu(w_gate x) * w_up x)``."""
    dt = compute_dtype(cfg)
    hidden = jax.nn.silu(_dense(x, p["w_gate"], dt)) * _dense(x, p["w_up"], dt)
    return _dense(hidden, p["w_down"], dt)


# ----------------------------------------------------------------------------- attention

def _attend(q, keys, values, mask, out_dtype):
    """q ``[B,Tq,H,D]``, keys/values ``[B,Tk,H,D]``, mask ``[Tq,Tk]`` bool (True = visible)."""
    scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, keys, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask[None, None], scores, _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(values.dtype), values,
                      preferred_element_type=jnp.float32).astype(out_dtype)


def _qkv(p, x, cfg):
    dt = compute_dtype(cfg)
    bsz, seq, _ = x.shape
    shape = (bsz, seq, cfg.attn_heads, cfg.attn_head_dim)
    return tuple(_dense(x, p[name], dt).reshape(shape) for name in ("wq", "wk", "wv"))


def attention_window(p, x, cfg: ModelConfig, prev_kv=None, prev_valid=None):
    """Causal attention over one window (``T <= L`` tokens), positions from the window start.

    Args:
      p: ``attn`` params ``{wq, wk, wv: [d, H*D], wo: [H*D, d]}``.
      x: normalised input ``[B, T, d]``.
      prev_kv: optional ``(k, v)`` of the previous window's last ``L-1`` tokens ``[B, L-1, H, D]``
        (keys already rotated to positions ``-(L-1)..-1``); sliding-window eviction only.
      prev_valid: scalar bool, False before the first boundary (then prev_kv is ignored).

    Returns ``(out [B, T, d], (k, v))`` with this window's rotated keys and values.
    """
    dt = compute_dtype(cfg)
    seq = x.shape[1]
    q, k, v = _qkv(p, x, cfg)
    pos = jnp.arange(seq)
    q, k = rope(q, pos, cfg.rope_theta), rope(k, pos, cfg.rope_theta)
    keys, values = k, v
    mask = pos[:, None] >= pos[None, :]
    if prev_kv is not None:
        pk, pv = prev_kv
        slots = jnp.arange(pk.shape[1])
        # prev slot s holds position s+1-L; query i sees it iff the distance i+L-1-s <= L-1.
        prev_mask = (slots[None, :] >= pos[:, None]) & prev_valid
        keys = jnp.concatenate([pk.astype(dt), k], axis=1)
        values = jnp.concatenate([pv.astype(dt), v], axis=1)
        mask = jnp.concatenate([prev_mask, mask], axis=1)
    o = _attend(q, keys, values, mask, dt)
    out = _dense(o.reshape(x.shape[0], seq, -1), p["wo"], dt)
    return out, (k, v)


def attention_step(p, x_t, cfg: ModelConfig, cache, position, prev_kv=None, prev_valid=None):
    """One token of attention against the current window's cache.

    Args:
      x_t: normalised input ``[B, d]``; position: int32 scalar, index of the token in its window.
      cache: ``(k_cache, v_cache)`` ``[B, L, H, D]``; slots ``> position`` are ignored.
      prev_kv, prev_valid: as in :func:`attention_window`.

    Returns ``(out [B, d], (k_cache, v_cache))`` with the token written at ``position``.
    """
    dt = compute_dtype(cfg)
    q, k, v = _qkv(p, x_t[:, None, :], cfg)                          # [B, 1, H, D]
    pos = jnp.reshape(position, (1,))
    q, k = rope(q, pos, cfg.rope_theta), rope(k, pos, cfg.rope_theta)
    k_cache, v_cache = cache
    k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype), position, 1)
    v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype), position, 1)
    slots = jnp.arange(k_cache.shape[1])
    mask = (slots <= position)[None, :]
    keys, values = k_cache.astype(dt), v_cache.astype(dt)
    if prev_kv is not None:
        pk, pv = prev_kv
        prev_mask = ((jnp.arange(pk.shape[1]) >= position) & prev_valid)[None, :]
        keys = jnp.concatenate([pk.astype(dt), keys], axis=1)
        values = jnp.concatenate([pv.astype(dt), values], axis=1)
        mask = jnp.concatenate([prev_mask, mask], axis=1)
    o = _attend(q, keys, values, mask, dt)
    out = _dense(o.reshape(x_t.shape[0], -1), p["wo"], dt)
    return out, (k_cache, v_cache)


def shift_to_previous_window(k, v, cfg: ModelConfig, window: int):
    """Keys/values a window hands to the next one under sliding eviction.

    Keeps the last ``L-1`` tokens and re-rotates their keys by ``-L`` so that positions are
    counted from the start of the next window (``-(L-1)..-1``).
    """
    k_tail, v_tail = k[:, 1:], v[:, 1:]
    shift = jnp.full((k_tail.shape[1],), -window, jnp.int32)
    return rope(k_tail, shift, cfg.rope_theta), v_tail


# ----------------------------------------------------------------------------- Gated DeltaNet

def causal_conv_window(x, w):
    """Depthwise causal conv from a zero history. x ``[B, T, C]``, w ``[W, C]`` (w[-1] = current)."""
    width, seq = w.shape[0], x.shape[1]
    padded = jnp.pad(x, ((0, 0), (width - 1, 0), (0, 0)))
    w = w.astype(x.dtype)
    return sum(padded[:, j:j + seq] * w[j] for j in range(width))


def causal_conv_step(cache, x_t, w):
    """One step of :func:`causal_conv_window`. cache ``[B, W-1, C]`` holds the previous inputs."""
    window = jnp.concatenate([cache.astype(x_t.dtype), x_t[:, None, :]], axis=1)
    out = jnp.sum(window * w.astype(x_t.dtype)[None], axis=1)
    return out, window[:, 1:].astype(cache.dtype)


def _l2_normalize(x, eps=1e-6):
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


GDN_STREAMS = ("q", "k", "v")   # projected, convolved and activated separately


def _gdn_projections(p, x, cfg):
    """Pre-conv ``{q: [B,T,HK], k: [B,T,HK], v: [B,T,HV]}`` and the gates (beta, log-decay g
    in f32, output gate).

    q, k and v stay separate arrays (not one packed channel axis): each channel axis is
    heads-major, so under model parallelism it splits on head boundaries and the convolution
    and the recurrence need no re-sharding (31% less traffic per step on a 2x4 mesh than one
    packed q|k|v axis, see benchmarks/RESULTS.md).
    """
    dt = compute_dtype(cfg)
    qkv = {name: _dense(x, p["w" + name], dt) for name in GDN_STREAMS}
    beta = jax.nn.sigmoid(_dense(x, p["wb"], dt).astype(jnp.float32))
    a = _dense(x, p["wa"], dt).astype(jnp.float32) + p["dt_bias"].astype(jnp.float32)
    g = -jnp.exp(p["A_log"].astype(jnp.float32)) * jax.nn.softplus(a)
    gate = _dense(x, p["wg"], dt)
    return qkv, beta, g, gate


def _gdn_mix(p, qkv_conv, beta, g, gate, state, cfg, impl):
    """SiLU, L2 norm of q/k, the gated delta rule from ``state``, gated RMSNorm, out-projection.

    ``qkv_conv`` maps ``q``, ``k``, ``v`` to their convolved ``[B, T, H*D]`` channels.
    ``impl`` is an implementation name of :func:`sleepjax.ops.gated_delta_rule`, or ``"step"``
    for a single token updated directly with the reference recurrence (no scan of length 1).
    """
    dt = compute_dtype(cfg)
    bsz, seq, _ = qkv_conv["v"].shape
    h, dk, dv = cfg.gdn_heads, cfg.gdn_head_dim, cfg.gdn_value_dim
    q = _l2_normalize(jax.nn.silu(qkv_conv["q"]).reshape(bsz, seq, h, dk))
    k = _l2_normalize(jax.nn.silu(qkv_conv["k"]).reshape(bsz, seq, h, dk))
    v = jax.nn.silu(qkv_conv["v"]).reshape(bsz, seq, h, dv)
    if impl == "step":
        new_state, o = recurrent_step(state, q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0],
                                      dk ** -0.5)
        o = o[:, None].astype(v.dtype)
    else:
        o, new_state = gated_delta_rule(q, k, v, g, beta, initial_state=state,
                                        chunk_size=cfg.gdn_chunk_size, impl=impl)
    o = rms_norm(o.astype(dt), p["out_norm"]["scale"], cfg.norm_eps)
    o = o * jax.nn.silu(gate.reshape(bsz, seq, h, dv))
    return _dense(o.reshape(bsz, seq, h * dv), p["wo"], dt), new_state


def gdn_window(p, x, state, cfg: ModelConfig):
    """Gated DeltaNet over one window (parallel form, ``impl = cfg.gdn_impl``).

    x: normalised input ``[B, T, d]``; state: fast weights ``[B, H, K, V]`` float32.
    Returns ``(out [B, T, d], new_state)``.
    """
    qkv, beta, g, gate = _gdn_projections(p, x, cfg)
    qkv = {name: causal_conv_window(qkv[name], p["conv_" + name]) for name in GDN_STREAMS}
    return _gdn_mix(p, qkv, beta, g, gate, state, cfg, cfg.gdn_impl)


def gdn_step(p, x_t, state, conv_cache, cfg: ModelConfig):
    """One token of Gated DeltaNet (recurrent decode path).

    ``conv_cache`` maps ``q``, ``k``, ``v`` to their last ``conv_size - 1`` pre-conv inputs
    ``[B, W-1, H*D]``. Returns ``(out [B, d], state, conv_cache)``.
    """
    qkv, beta, g, gate = _gdn_projections(p, x_t[:, None, :], cfg)
    qkv_t, new_cache = {}, {}
    for name in GDN_STREAMS:
        out_t, new_cache[name] = causal_conv_step(conv_cache[name], qkv[name][:, 0], p["conv_" + name])
        qkv_t[name] = out_t[:, None, :]
    out, state = _gdn_mix(p, qkv_t, beta, g, gate, state, cfg, "step")
    return out[:, 0], state, new_cache
