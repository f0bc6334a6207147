"""Full-attention transformer of the same width: the benchmark baseline whose KV cache grows.

Every block of ``model_cfg.layer_pattern`` becomes an attention block (same d_model, heads,
MLP); attention is causal over the whole sequence (RoPE with absolute positions) and nothing
is ever evicted, so a decode step costs O(context). Used by ``benchmarks/bench_wake_sleep.py``.
It runs the same block loop as :class:`~sleepjax.models.SleepLM` (:mod:`sleepjax.models.blocks`).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from sleepjax.models.attention import KVCache, zero_kv_cache
from sleepjax.models.blocks import block_name, embed, output_logits, run_blocks
from sleepjax.models.config import ModelConfig
from sleepjax.models.params import declare_lm_params
from sleepjax.models.validation import validate_tokens


def _pattern(cfg: ModelConfig) -> str:
    return "A" * cfg.num_layers


def _run(params, tokens, caches, position, cfg: ModelConfig):
    h = embed(params, tokens, cfg)
    h, caches = run_blocks(params, h, caches, range(cfg.num_layers), position, cfg)
    return output_logits(params, h, cfg), caches


def baseline_forward(params, tokens, cfg: ModelConfig):
    """``tokens [B, T] -> logits [B, T, vocab]`` with full causal attention."""
    return _run(params, tokens, {}, 0, cfg)[0]


def prefill(params, tokens, cfg: ModelConfig, max_len: int):
    """Run ``tokens [B, P]`` in parallel; return ``(logits, cache)`` with room for ``max_len``."""
    if max_len < tokens.shape[1]:
        raise ValueError(f"max_len: must be >= the prompt length {tokens.shape[1]}, got {max_len}")
    logits, caches = _run(params, tokens, {}, 0, cfg)
    pad = ((0, 0), (0, max_len - tokens.shape[1]), (0, 0), (0, 0))
    return logits, {name: tuple(jnp.pad(x, pad) for x in kv) for name, kv in caches.items()}


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int):
    """KV cache holding ``max_len`` tokens per attention layer."""
    return {block_name(i): tuple(zero_kv_cache(cfg, batch_size, max_len))
            for i in range(cfg.num_layers)}


def decode_step(params, cache, token, position, cfg: ModelConfig):
    """One token ``[B]`` at absolute ``position`` against a cache of all earlier tokens."""
    caches = {name: KVCache(*kv) for name, kv in cache.items()}
    logits, caches = _run(params, token[:, None], caches, position, cfg)
    return logits[:, 0], {name: tuple(kv) for name, kv in caches.items()}


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
