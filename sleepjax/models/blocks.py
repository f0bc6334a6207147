"""The block stack: embedding, one pre-norm block, one loop over blocks, the output head.

One code path serves the training forward, the sleep passes, prefill, streaming wake steps and
the full-attention baseline: a block is ``h += mixer(RMSNorm(h)); h += SwiGLU(RMSNorm(h))``
where the mixer (:func:`~sleepjax.models.attention.attention` or
:func:`~sleepjax.models.gated_deltanet.gated_deltanet`) takes an optional cache and returns the
new one; ``T == 1`` with caches is a streaming step, ``T <= L`` from no cache a window.
"""

from __future__ import annotations

import jax.numpy as jnp

from sleepjax.models import layers
from sleepjax.models.attention import attention
from sleepjax.models.config import ModelConfig
from sleepjax.models.gated_deltanet import gated_deltanet, zero_fast_weights_of
from sleepjax.parallel.activations import constrain


def block_name(i: int) -> str:
    return f"blocks_{i}"


def gdn_layer_names(cfg: ModelConfig, start: int = 0, end: int | None = None):
    end = cfg.num_layers if end is None else end
    return [block_name(i) for i in range(start, end) if cfg.mixer_pattern[i] == "G"]


def attn_layer_names(cfg: ModelConfig):
    return [block_name(i) for i, kind in enumerate(cfg.mixer_pattern) if kind == "A"]


def zero_fast_weights(cfg: ModelConfig, batch_size: int):
    """Fresh fast weights (every sequence starts from S = 0): ``{blocks_i: [B, Hv, K, V] f32}``."""
    return {name: zero_fast_weights_of(cfg, batch_size) for name in gdn_layer_names(cfg)}


def residual_stream(h):
    """Pin hidden states ``[B, ..., d]`` to batch-only sharding (a no-op without a mesh).

    Under FSDP the weights' d_model dim is split over ``fsdp``; without this hint XLA lets
    the residual stream inherit that split and then cannot re-shard it cheaply inside the
    window / sleep loops (an "involuntary full rematerialization"). Pinned, the weights are
    gathered instead, which is what FSDP means.
    """
    return constrain(h, ("batch", ...))


def fast_weight_layout(state):
    """Pin a fast-weight state ``[B, H, K, V]`` to batch x heads, so it never moves in a loop."""
    return constrain(state, ("batch", "heads", None, None))


def embed(params, tokens, cfg: ModelConfig):
    """``tokens [B, T]`` -> hidden states ``[B, T, d]`` (batch-pinned) in the compute dtype."""
    # Gather the table's FSDP-split d_model dim before the lookup (rows may stay split over
    # the vocabulary): a gather from a table split along its feature dim cannot be re-sharded
    # to the batch layout without replicating the result first.
    table = constrain(params["embed"]["embedding"], ("vocab", None))
    return residual_stream(jnp.take(table, tokens, axis=0).astype(layers.compute_dtype(cfg)))


def output_logits(params, h, cfg: ModelConfig):
    """Final RMSNorm and the (tied or untied) head; float32 logits."""
    dt = layers.compute_dtype(cfg)
    h = layers.norm(h, params["final_norm"], cfg)
    w = params["embed"]["embedding"].T if cfg.tie_embeddings else params["head"]["kernel"]
    return jnp.dot(h.astype(dt), w.astype(dt), preferred_element_type=jnp.float32)


def block(p, h, cache, position, cfg: ModelConfig, previous=None):
    """One pre-norm block; its kind is the mixer its parameters declare (``attn`` or ``gdn``).

    ``cache`` / ``position`` / ``previous`` go to the mixer (``previous`` to attention only).
    Returns ``(h, cache)``.
    """
    x = layers.norm(h, p["mixer_norm"], cfg)
    if "attn" in p:
        out, cache = attention(p["attn"], x, cache, position, cfg, previous)
    else:
        out, cache = gated_deltanet(p["gdn"], x, cache, position, cfg)
        cache = cache._replace(fast_weights=fast_weight_layout(cache.fast_weights))
    h = h + out
    if "mlp" in p:                  # lowercase pattern letters are blocks without an MLP
        h = h + layers.mlp(p["mlp"], layers.norm(h, p["mlp_norm"], cfg), cfg)
    return residual_stream(h), cache


def run_blocks(params, h, caches, layer_ids, position, cfg: ModelConfig, previous=None):
    """``blocks[i] for i in layer_ids`` over ``h [B, T, d]``; returns ``(h, caches)``.

    Args:
      caches: ``{blocks_i: cache}`` per layer (a missing attention entry is the window form);
        the returned dict (a new one) also holds the cache after ``h`` of every layer run.
      position: position of ``h[:, 0]`` in its window (0 for a window).
      previous: the :class:`~sleepjax.models.carry.WindowCarry` whose sliding-eviction
        ``previous_kv`` (and ``previous_visible``) attention layers also attend to, or None.
    """
    caches = dict(caches)
    for i in layer_ids:
        name = block_name(i)
        kv = None if previous is None else previous.previous_kv.get(name)
        earlier = None if kv is None else (*kv, previous.previous_visible)
        h, caches[name] = block(params[name], h, caches.get(name), position, cfg, earlier)
    return h, caches


def fast_weights_of(caches, names):
    return {name: caches[name].fast_weights for name in names}
