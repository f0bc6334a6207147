"""Masked next-token cross-entropy (Algorithm 1's MaskedCE)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_cross_entropy(logits, targets, mask=None):
    """Mean cross-entropy over positions where ``mask`` is non-zero.

    Args:
      logits: ``[B, T, V]`` (any float dtype; computed in float32).
      targets: ``[B, T]`` int ids, already shifted (``targets[:, i]`` follows ``tokens[:, i]``).
      mask: ``[B, T]`` weights (bool or float); None = every position.

    Returns a float32 scalar; 0 when the mask is all zero.
    """
    if logits.ndim != 3:
        raise ValueError(f"logits: must be [B, T, V], got shape {tuple(logits.shape)}")
    if tuple(targets.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"targets: shape {tuple(targets.shape)} must equal logits' [B, T] "
                         f"{tuple(logits.shape[:2])}")
    if mask is not None and tuple(mask.shape) != tuple(targets.shape):
        raise ValueError(f"mask: shape {tuple(mask.shape)} differs from targets {tuple(targets.shape)}")
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    weights = jnp.ones_like(nll) if mask is None else mask.astype(jnp.float32)
    return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)
