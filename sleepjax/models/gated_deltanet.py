"""The Gated DeltaNet mixer (causal short conv + gated delta rule): one function for the window
form (training, sleep passes, prefill) and the one-token streaming step.

Heads: ``gdn_heads`` key (and query) heads of dim K and ``gdn_value_heads`` value heads of
dim V, one fast-weight matrix ``[K, V]`` per value head; with more value heads than key heads
(Qwen3.5), key head ``i`` serves value heads ``i*r .. (i+1)*r - 1``. The gates (beta, decay)
are per value head.

The causal short convolution restarts from zeros at every window start and in every pass (like
the KV cache under hard eviction): only the fast weights S cross a window boundary. S and the
decays are float32 always.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from sleepjax.models.config import ModelConfig
from sleepjax.models.layers import compute_dtype, dense, rms_norm
from sleepjax.ops import gated_delta_rule

GDN_STREAMS = ("q", "k", "v")   # projected, convolved and activated separately


class GDNCache(NamedTuple):
    """What a GDN layer remembers: fast weights and (streaming) the short conv's history.

    ``fast_weights [B, Hv, K, V]`` float32; ``conv``: None (a window start: zero history) or
    ``{q, k: [B, W-1, Hk*K], v: [B, W-1, Hv*V]}`` the last ``conv_size - 1`` pre-conv inputs.
    """

    fast_weights: jax.Array
    conv: dict | None = None


def conv_channels(cfg: ModelConfig) -> dict:
    return {"q": cfg.gdn_heads * cfg.gdn_head_dim, "k": cfg.gdn_heads * cfg.gdn_head_dim,
            "v": cfg.gdn_value_heads * cfg.gdn_value_head_dim}


def zero_fast_weights_of(cfg: ModelConfig, batch_size: int):
    return jnp.zeros((batch_size, cfg.gdn_value_heads, cfg.gdn_head_dim, cfg.gdn_value_head_dim),
                     jnp.float32)


def zero_conv_history(cfg: ModelConfig, batch_size: int) -> dict:
    dt = compute_dtype(cfg)
    return {name: jnp.zeros((batch_size, cfg.conv_size - 1, channels), dt)
            for name, channels in conv_channels(cfg).items()}


def causal_conv(x, w, history=None):
    """Depthwise causal conv. x ``[B, T, C]``, w ``[W, C]`` (w[-1] = current token).

    ``history [B, W-1, C]``: the inputs before ``x`` (None: zeros, a window start).
    Returns ``(out [B, T, C], history after x [B, W-1, C])``.
    """
    width, seq = w.shape[0], x.shape[1]
    if history is None:
        padded = jnp.pad(x, ((0, 0), (width - 1, 0), (0, 0)))
    else:
        padded = jnp.concatenate([history.astype(x.dtype), x], axis=1)
    w = w.astype(x.dtype)
    out = sum(padded[:, j:j + seq] * w[j] for j in range(width))
    tail = padded[:, seq:]
    return out, tail if history is None else tail.astype(history.dtype)


def _l2_normalize(x, eps=1e-6):
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


def _projections(p, x, cfg):
    """Pre-conv ``{q: [B,T,HK], k: [B,T,HK], v: [B,T,HV]}`` and the gates (beta, log-decay g
    in f32, output gate).

    q, k and v stay separate arrays (not one packed channel axis): each channel axis is
    heads-major, so under model parallelism it splits on head boundaries and the convolution
    and the recurrence need no re-sharding (31% less traffic per step on a 2x4 mesh than one
    packed q|k|v axis, see benchmarks/RESULTS.md).
    """
    dt = compute_dtype(cfg)
    qkv = {name: dense(x, p["w" + name], dt) for name in GDN_STREAMS}
    beta = jax.nn.sigmoid(dense(x, p["wb"], dt).astype(jnp.float32))
    a = dense(x, p["wa"], dt).astype(jnp.float32) + p["dt_bias"].astype(jnp.float32)
    g = -jnp.exp(p["A_log"].astype(jnp.float32)) * jax.nn.softplus(a)
    gate = dense(x, p["wg"], dt)
    return qkv, beta, g, gate


def gated_deltanet(p, x, cache: GDNCache | None, position, cfg: ModelConfig):
    """Gated DeltaNet over ``T`` new tokens: ``(out [B, T, d], cache after x)``.

    Args:
      p: ``gdn`` params (layout in :mod:`sleepjax.models`).
      x: normalised input ``[B, T, d]``.
      cache: a :class:`GDNCache` (None: S = 0 at a window start). With a conv history and
        ``T == 1`` this is the streaming step, which runs the op's ``"recurrent"`` form (one
        step); otherwise the op runs ``impl = cfg.gdn_impl``.
      position: unused (the mixer has no positions); kept so every mixer has one signature.
    """
    del position
    dt = compute_dtype(cfg)
    bsz, seq, _ = x.shape
    h, hv, dk, dv = cfg.gdn_heads, cfg.gdn_value_heads, cfg.gdn_head_dim, cfg.gdn_value_head_dim
    if cache is None:
        cache = GDNCache(zero_fast_weights_of(cfg, bsz))
    qkv, beta, g, gate = _projections(p, x, cfg)
    convolved, history = {}, {}
    for name in GDN_STREAMS:
        past = None if cache.conv is None else cache.conv[name]
        convolved[name], history[name] = causal_conv(qkv[name], p["conv_" + name], past)
    q = _l2_normalize(jax.nn.silu(convolved["q"]).reshape(bsz, seq, h, dk))
    k = _l2_normalize(jax.nn.silu(convolved["k"]).reshape(bsz, seq, h, dk))
    v = jax.nn.silu(convolved["v"]).reshape(bsz, seq, hv, dv)
    # The streaming step (a conv history and one token) takes the token recurrence: one step,
    # no chunk padding (every form computes the same function).
    impl = "recurrent" if cache.conv is not None and seq == 1 else cfg.gdn_impl
    o, state = gated_delta_rule(q, k, v, g, beta, initial_state=cache.fast_weights,
                                chunk_size=cfg.gdn_chunk_size, impl=impl)
    o = rms_norm(o.astype(dt), p["out_norm"]["scale"], cfg.gdn_norm_eps)
    o = o * jax.nn.silu(gate.reshape(bsz, seq, hv, dv))
    return dense(o.reshape(bsz, seq, hv * dv), p["wo"], dt), GDNCache(state, history)
