"""Linen modules that only *declare* parameters (names, shapes, initialisers).

The computation lives in pure functions (:mod:`sleepjax.models.layers`,
:mod:`sleepjax.models.sleep_lm`) that read the resulting dict, so the same parameters drive
the training forward, the sleep passes and the streaming step. Kernels are ``[in, out]``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from sleepjax.models.config import ModelConfig


def _trunc_normal(std):
    # truncated at 2 std, rescaled so the std is the requested one (as in lecun_normal)
    return nn.initializers.truncated_normal(stddev=std / 0.87962566103423978)


def _fan_in(fan_in, gain=1.0):
    return _trunc_normal(gain / math.sqrt(fan_in))


def _residual_out(fan_in, num_layers):
    # GPT-2 style: shrink the residual out-projections so the stream's scale does not grow with depth
    return _fan_in(fan_in, 1.0 / math.sqrt(2 * num_layers))


def _uniform(bound):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def _a_log_init(key, shape, dtype=jnp.float32):
    # A ~ U(0, 16) as in fla's GatedDeltaNet; tiny floor keeps log finite
    a = jax.random.uniform(key, shape, jnp.float32, 0.0, 16.0)
    return jnp.log(jnp.maximum(a, 1e-4)).astype(dtype)


def _dt_bias_init(key, shape, dtype=jnp.float32, dt_min=1e-3, dt_max=0.1, dt_floor=1e-4):
    # dt ~ logU[dt_min, dt_max]; store softplus^{-1}(dt) so softplus(0 + dt_bias) = dt at init
    u = jax.random.uniform(key, shape, jnp.float32)
    dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = jnp.maximum(dt, dt_floor)
    return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)


class RMSNormParams(nn.Module):
    dim: int

    @nn.compact
    def __call__(self):
        self.param("scale", nn.initializers.ones, (self.dim,))


class EmbedParams(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self):
        self.param("embedding", _trunc_normal(1.0 / math.sqrt(self.cfg.d_model)),
                   (self.cfg.vocab_size, self.cfg.d_model))


class HeadParams(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self):
        self.param("kernel", _fan_in(self.cfg.d_model), (self.cfg.d_model, self.cfg.vocab_size))


class AttentionParams(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self):
        c = self.cfg
        inner = c.attn_heads * c.attn_head_dim
        for name in ("wq", "wk", "wv"):
            self.param(name, _fan_in(c.d_model), (c.d_model, inner))
        self.param("wo", _residual_out(inner, c.num_layers), (inner, c.d_model))


class GatedDeltaNetParams(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self):
        c = self.cfg
        hk, hv = c.gdn_heads * c.gdn_head_dim, c.gdn_heads * c.gdn_value_dim
        self.param("wq", _fan_in(c.d_model), (c.d_model, hk))
        self.param("wk", _fan_in(c.d_model), (c.d_model, hk))
        self.param("wv", _fan_in(c.d_model), (c.d_model, hv))
        self.param("wa", _fan_in(c.d_model), (c.d_model, c.gdn_heads))
        self.param("wb", _fan_in(c.d_model), (c.d_model, c.gdn_heads))
        self.param("wg", _fan_in(c.d_model), (c.d_model, hv))
        self.param("wo", _residual_out(hv, c.num_layers), (hv, c.d_model))
        conv_bound = 1.0 / math.sqrt(c.conv_size)   # PyTorch Conv1d default for a depthwise conv
        self.param("conv_q", _uniform(conv_bound), (c.conv_size, hk))
        self.param("conv_k", _uniform(conv_bound), (c.conv_size, hk))
        self.param("conv_v", _uniform(conv_bound), (c.conv_size, hv))
        self.param("A_log", _a_log_init, (c.gdn_heads,))
        self.param("dt_bias", _dt_bias_init, (c.gdn_heads,))
        RMSNormParams(c.gdn_value_dim, name="out_norm")()


class MLPParams(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self):
        c = self.cfg
        f = c.mlp_hidden_dim
        self.param("w_gate", _fan_in(c.d_model), (c.d_model, f))
        self.param("w_up", _fan_in(c.d_model), (c.d_model, f))
        self.param("w_down", _residual_out(f, c.num_layers), (f, c.d_model))


class BlockParams(nn.Module):
    """Pre-norm block: ``mixer_norm``, ``attn`` or ``gdn``, ``mlp_norm``, ``mlp``."""

    cfg: ModelConfig
    kind: str   # "A" or "G"

    @nn.compact
    def __call__(self):
        RMSNormParams(self.cfg.d_model, name="mixer_norm")()
        if self.kind == "A":
            AttentionParams(self.cfg, name="attn")()
        else:
            GatedDeltaNetParams(self.cfg, name="gdn")()
        RMSNormParams(self.cfg.d_model, name="mlp_norm")()
        MLPParams(self.cfg, name="mlp")()


def declare_lm_params(cfg: ModelConfig, pattern: str | None = None):
    """Declare the whole LM's parameters inside a compact linen ``__call__``."""
    EmbedParams(cfg, name="embed")()
    for i, kind in enumerate(pattern or cfg.layer_pattern):
        BlockParams(cfg, kind, name=f"blocks_{i}")()
    RMSNormParams(cfg.d_model, name="final_norm")()
    if not cfg.tie_embeddings:
        HeadParams(cfg, name="head")()
