"""Pure-JAX references of the gated delta rule: the token recurrence and the chunked form
differentiated by JAX autodiff.

Convention ("decay, then delta", as in flash-linear-attention; fla issue #885):

    S_t = exp(g_t) S_{t-1} + beta_t k_t (v_t - exp(g_t) S_{t-1}^T k_t)^T        S_t: [K, V]
    o_t = scale * S_t^T q_t

The recurrent scan is the ground truth every other implementation is tested against, and
the decode path (T = 1). The chunked reference is the chunked form's one forward
(``chunk_math.chunked_forward``) differentiated by plain autodiff through a rematerialised
scan; the XLA form (``xla.py``) runs the same forward with a hand-written backward, and is
tested against both.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from pallas_kernels.gated_delta_rule.chunk_math import chunked_forward, group_geometry


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
    if q.shape[1] == 1:   # one token (the streaming decode step): the step itself, no loop
        final_state, o = recurrent_step(state0, *(x[:, 0] for x in (q, k, v, g, beta)), scale)
        return o[:, None].astype(v.dtype), final_state

    def body(state, xs):
        return recurrent_step(state, *xs, scale)

    time_major = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, g, beta))
    final_state, o = jax.lax.scan(body, state0, time_major)
    return jnp.moveaxis(o, 0, 1).astype(v.dtype), final_state


def gated_delta_rule_chunked_reference(q, k, v, g, beta, *, initial_state=None, scale,
                                       chunk_size=64, chunks_per_group=None):
    """The chunked form differentiated by autodiff, memory-light by two-level remat: the scan
    over groups keeps only the groups' entry states, each group is recomputed when its
    gradient is needed.

    ``chunks_per_group``: chunks a rematerialised group holds (default ~sqrt(#chunks)).
    """
    bsz, seq, heads, dk = q.shape
    if chunks_per_group is None:
        num_chunks, _ = group_geometry(seq, int(chunk_size), 1)
        chunks_per_group = max(1, math.isqrt(num_chunks))
    state0 = initial_state_or_zeros(initial_state, bsz, heads, dk, v.shape[-1])
    outputs, _ = chunked_forward(q, k, v, g, beta, state0, scale=scale, chunk_size=int(chunk_size),
                                 chunks_per_group=int(chunks_per_group), remat=True)
    return outputs
