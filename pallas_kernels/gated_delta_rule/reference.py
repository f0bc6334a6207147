"""Pure-JAX references of the gated delta rule: the token recurrence and the chunked form
differentiated by JAX autodiff.

Convention ("decay, then delta", as in flash-linear-attention; fla issue #885):

    S_t = exp(g_t) S_{t-1} + beta_t k_t (v_t - exp(g_t) S_{t-1}^T k_t)^T        S_t: [K, V]
    o_t = scale * S_t^T q_t

The recurrent scan is the ground truth every other implementation is tested against, and
the decode path (T = 1). The chunked reference is the WY form of ``chunk_math`` with plain
autodiff through a rematerialised scan; the fast XLA form (``xla.py``) has a hand-written
backward and is tested against both.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from pallas_kernels.gated_delta_rule.chunk_math import chunk_factors, chunk_inputs, chunk_step, from_chunks


def recurrent_step(state, q_t, k_t, v_t, g_t, beta_t, scale):
    """One token. state [B,H,K,V] f32; q_t,k_t [B,H,K]; v_t [B,H,V]; g_t,beta_t [B,H].

    Returns (new_state, o_t [B,H,V] f32).
    """
    q_t, k_t, v_t = (x.astype(jnp.float32) for x in (q_t, k_t, v_t))
    decayed = state * jnp.exp(g_t.astype(jnp.float32))[..., None, None]
    predicted = jnp.einsum("bhkv,bhk->bhv", decayed, k_t)
    delta = beta_t.astype(jnp.float32)[..., None] * (v_t - predicted)
    new_state = decayed + k_t[..., :, None] * delta[..., None, :]
    o_t = scale * jnp.einsum("bhkv,bhk->bhv", new_state, q_t)
    return new_state, o_t


def initial_state_or_zeros(initial_state, bsz, heads, dk, dv):
    if initial_state is None:
        return jnp.zeros((bsz, heads, dk, dv), jnp.float32)
    return initial_state.astype(jnp.float32)


def gated_delta_rule_recurrent(q, k, v, g, beta, *, initial_state=None, scale):
    """Token-by-token float32 scan; returns ``(o [B,T,H,V] in v's dtype, final_state f32)``."""
    bsz, _, heads, dk = q.shape
    state0 = initial_state_or_zeros(initial_state, bsz, heads, dk, v.shape[-1])

    def body(state, xs):
        return recurrent_step(state, *xs, scale)

    time_major = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, g, beta))
    final_state, o = jax.lax.scan(body, state0, time_major)
    return jnp.moveaxis(o, 0, 1).astype(v.dtype), final_state


def scan_chunks_remat(state0, factors, *, segment=None):
    """Run ``chunk_step`` over axis 0 of every factor (chunk-major), with two-level remat.

    The outer scan walks segments of ``segment`` chunks (default ~sqrt(#chunks)) and keeps
    only segment-entry states for the backward pass; each segment's chunk states are
    recomputed when needed. Returns (final_state, outputs stacked over chunks).
    """
    num_chunks = factors["w"].shape[0]
    if segment is None:
        segment = max(1, math.isqrt(num_chunks))
    segment = max(1, min(segment, num_chunks))
    step = jax.checkpoint(chunk_step, prevent_cse=False)
    if segment == 1 or segment >= num_chunks:
        return jax.lax.scan(step, state0, factors)
    num_segments = -(-num_chunks // segment)
    pad = num_segments * segment - num_chunks
    if pad:
        # Zero factors with decay_end = 1 make a chunk an exact no-op on the state.
        def pad_factor(name, x):
            fill = 1.0 if name == "decay_end" else 0.0
            return jnp.concatenate([x, jnp.full((pad,) + x.shape[1:], fill, x.dtype)], axis=0)
        factors = {name: pad_factor(name, x) for name, x in factors.items()}
    grouped = jax.tree.map(lambda x: x.reshape((num_segments, segment) + x.shape[1:]), factors)

    @jax.checkpoint
    def run_segment(state, seg_factors):
        return jax.lax.scan(step, state, seg_factors)

    final_state, outs = jax.lax.scan(run_segment, state0, grouped)
    outs = outs.reshape((num_segments * segment,) + outs.shape[2:])[:num_chunks]
    return final_state, outs


def gated_delta_rule_chunked_reference(q, k, v, g, beta, *, initial_state=None, scale,
                                       chunk_size=64, segment=None):
    """Chunked WY form differentiated by autodiff (memory-light thanks to two-level remat).

    ``segment``: chunks per rematerialisation segment (default ~sqrt(#chunks)).
    """
    bsz, seq, heads, dk = q.shape
    dv = v.shape[-1]
    factors = chunk_factors(*chunk_inputs(q, k, v, g, beta, int(chunk_size)), scale=scale)
    factors = jax.tree.map(lambda x: jnp.moveaxis(x, 2, 0), factors)   # chunk axis first
    state0 = initial_state_or_zeros(initial_state, bsz, heads, dk, dv)
    final_state, outs = scan_chunks_remat(state0, factors, segment=segment)
    return from_chunks(jnp.moveaxis(outs, 0, 2), seq).astype(v.dtype), final_state
