"""Primitives shared by every block: dtype, dense, RMSNorm, RoPE and the SwiGLU MLP.

Pure functions of explicit parameter dicts (as declared by :mod:`sleepjax.models.params`).
Conventions: activations ``[B, T, d]`` in the compute dtype (``ModelConfig.dtype``);
parameters are float32 and cast at use; norms and RoPE compute in float32.
The sequence mixers live in :mod:`sleepjax.models.attention` and
:mod:`sleepjax.models.gated_deltanet`, the block in :mod:`sleepjax.models.blocks`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sleepjax.models.config import ModelConfig


def compute_dtype(cfg: ModelConfig):
    return jnp.dtype(cfg.dtype)


def dense(x, w, dtype):
    """``x @ w`` with both cast to the compute dtype (kernels are ``[in, out]``)."""
    return jnp.dot(x.astype(dtype), w.astype(dtype))


def rms_norm(x, scale, eps, zero_centered=False):
    """RMSNorm over the last axis, computed in float32, returned in x's dtype.

    ``zero_centered``: the scale is ``1 + scale`` (Qwen3.5 / Gemma storage), so a zero
    parameter is the identity.
    """
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    scale = scale.astype(jnp.float32)
    return (y * (1.0 + scale if zero_centered else scale)).astype(x.dtype)


def norm(x, p, cfg: ModelConfig):
    """The model's RMSNorm with params ``p = {scale}`` (zero-centred if the config says so)."""
    return rms_norm(x, p["scale"], cfg.norm_eps, cfg.zero_centered_norms)


def rope(x, positions, theta, rotary_dim=None):
    """Rotary embedding (rotate-half convention). x ``[B, T, H, D]``, positions ``[T]``.

    ``rotary_dim``: rotate only the first ``rotary_dim`` features (partial rotary, as in
    Qwen3.5 and GPT-NeoX); the rest pass through. Frequencies are ``theta ** (-2i / rotary_dim)``.
    Rotations compose: ``rope(rope(x, p), q) == rope(x, p + q)``, which the sliding-window
    boundary shift relies on.
    """
    rotary_dim = x.shape[-1] if rotary_dim is None else rotary_dim
    half = rotary_dim // 2
    freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[:, None] * freqs[None, :]          # [T, half]
    cos, sin = jnp.cos(angles)[None, :, None, :], jnp.sin(angles)[None, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2, rest = x32[..., :half], x32[..., half:rotary_dim], x32[..., rotary_dim:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)
    return out.astype(x.dtype)


def mlp(p, x, cfg: ModelConfig):
    """SwiGLU: ``w_down(silu(w_gate x) * w_up x)``."""
    dt = compute_dtype(cfg)
    hidden = jax.nn.silu(dense(x, p["w_gate"], dt)) * dense(x, p["w_up"], dt)
    return dense(hidden, p["w_down"], dt)
