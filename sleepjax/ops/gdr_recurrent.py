"""Recurrent reference of the gated delta rule: a float32 ``lax.scan`` over time.

This is the ground truth every other implementation is tested against, and the decode
path (T = 1). See ``sleepjax.ops.gated_delta_rule`` for the convention.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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


def gated_delta_rule_recurrent(q, k, v, g, beta, *, initial_state=None, scale):
    bsz, _, heads, dk = q.shape
    dv = v.shape[-1]
    if initial_state is None:
        state0 = jnp.zeros((bsz, heads, dk, dv), jnp.float32)
    else:
        state0 = initial_state.astype(jnp.float32)

    def body(state, xs):
        return recurrent_step(state, *xs, scale)

    time_major = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, g, beta))
    final_state, o = jax.lax.scan(body, state0, time_major)
    return jnp.moveaxis(o, 0, 1).astype(v.dtype), final_state
