"""Full-attention transformer of the same width: the benchmark baseline whose KV cache grows.

Every block of ``model_cfg.layer_pattern`` becomes an attention block (same d_model, heads,
MLP); attention is causal over the whole sequence (RoPE with absolute positions) and nothing
is ever evicted, so a decode step costs O(context). Used by ``benchmarks/bench_wake_sleep.py``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sleepjax.models import layers
from sleepjax.models.config import ModelConfig
from sleepjax.models.params import declare_lm_params
from sleepjax.models.sleep_lm import block_name, embed, output_logits
from sleepjax.models.validation import validate_tokens


def _pattern(cfg: ModelConfig) -> str:
    return "A" * cfg.num_layers


def _block_residuals(p, h, out, cfg):
    h = h + out
    return h + layers.mlp(p["mlp"], layers.rms_norm(h, p["mlp_norm"]["scale"], cfg.norm_eps), cfg)


def baseline_forward(params, tokens, cfg: ModelConfig):
    """``tokens [B, T] -> logits [B, T, vocab]`` with full causal attention."""
    h = embed(params, tokens, cfg)
    for i in range(cfg.num_layers):
        p = params[block_name(i)]
        x = layers.rms_norm(h, p["mixer_norm"]["scale"], cfg.norm_eps)
        out, _ = layers.attention_window(p["attn"], x, cfg)
        h = _block_residuals(p, h, out, cfg)
    return output_logits(params, h, cfg)


def prefill(params, tokens, cfg: ModelConfig, max_len: int):
    """Run ``tokens [B, P]`` in parallel; return ``(logits, cache)`` with room for ``max_len``."""
    if max_len < tokens.shape[1]:
        raise ValueError(f"max_len: must be >= the prompt length {tokens.shape[1]}, got {max_len}")
    h = embed(params, tokens, cfg)
    cache = {}
    pad = ((0, 0), (0, max_len - tokens.shape[1]), (0, 0), (0, 0))
    for i in range(cfg.num_layers):
        p = params[block_name(i)]
        x = layers.rms_norm(h, p["mixer_norm"]["scale"], cfg.norm_eps)
        out, (k, v) = layers.attention_window(p["attn"], x, cfg)
        cache[block_name(i)] = (jnp.pad(k, pad), jnp.pad(v, pad))
        h = _block_residuals(p, h, out, cfg)
    return output_logits(params, h, cfg), cache


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int):
    """KV cache holding ``max_len`` tokens per attention layer."""
    shape = (batch_size, max_len, cfg.attn_heads, cfg.attn_head_dim)
    dt = layers.compute_dtype(cfg)
    return {block_name(i): (jnp.zeros(shape, dt), jnp.zeros(shape, dt)) for i in range(cfg.num_layers)}


def decode_step(params, cache, token, position, cfg: ModelConfig):
    """One token at absolute ``position`` against a cache of all earlier tokens."""
    h = embed(params, token, cfg)
    cache = dict(cache)
    for i in range(cfg.num_layers):
        name = block_name(i)
        p = params[name]
        x = layers.rms_norm(h, p["mixer_norm"]["scale"], cfg.norm_eps)
        out, cache[name] = layers.attention_step(p["attn"], x, cfg, cache[name], position)
        h = _block_residuals(p, h, out, cfg)
    return output_logits(params, h, cfg), cache


class _BaselineParams(nn.Module):
    model_cfg: ModelConfig

    @nn.compact
    def __call__(self):
        declare_lm_params(self.model_cfg, _pattern(self.model_cfg))


def init_baseline_params(cfg: ModelConfig, rng):
    return _BaselineParams(cfg).init(rng)["params"]


class FullAttentionLM(nn.Module):
    """All-attention LM of the same width as ``SleepLM(model_cfg, ...)``; no window, no sleep."""

    model_cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens):
        validate_tokens(tokens, self.model_cfg.vocab_size)
        declare_lm_params(self.model_cfg, _pattern(self.model_cfg))
        return baseline_forward(self.variables["params"], jnp.asarray(tokens), self.model_cfg)
