"""Chunked gated delta rule in XLA with a hand-written backward (``jax.custom_vjp``).

Forward: the state-independent factors of every chunk at once (``chunk_math.chunk_factors``),
then one plain ``lax.scan`` over chunks that carries the ``[K, V]`` state and also emits each
chunk's entry state (the only residual beyond the inputs: ``N x K x V`` per head, as
flash-linear-attention's ``chunk_delta_h`` keeps).

Backward (instead of autodiff through a rematerialised scan, which re-ran the forward scan
twice and differentiated every small op of the chunk step):
  1. recompute the factors under ``jax.vjp`` (batched over all chunks);
  2. one reverse ``lax.scan`` carrying only dS, the cotangent of a chunk's exit state:
        dU = P^T dO + K_end dS;   dS_entry = Q_read^T dO + exp(G_C) dS - W^T dU
  3. every other cotangent of the chunk step, batched over all chunks from the saved entry
     states S, the emitted dU and dS (U = U_c - W S):
        dW = -dU S^T, dU_c = dU, dQ_read = dO S^T, dP = dO U^T, dK_end = U dS^T,
        d exp(G_C) = <S, dS>;
  4. pull those back through the factors' VJP to q, k, v, g, beta.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.gated_delta_rule.chunk_math import chunk_factors, chunk_inputs, from_chunks, pad_time, to_chunks

_HIGHEST = jax.lax.Precision.HIGHEST


def _mm(spec, a, b):
    return jnp.einsum(spec, a, b, precision=_HIGHEST, preferred_element_type=jnp.float32)


def _factors_chunk_major(q, k, v, g, beta, *, scale, chunk_size):
    """``chunk_factors`` of the padded inputs with the chunk axis first: ``[N, B, H, ...]``."""
    factors = chunk_factors(*chunk_inputs(q, k, v, g, beta, chunk_size), scale=scale)
    return jax.tree.map(lambda x: jnp.moveaxis(x, 2, 0), factors)


def _scan_forward(state0, factors, *, keep_states):
    """Scan over chunks; returns (final_state, outs [N,...,C,V], entry states [N,...,K,V] | None)."""

    def step(state, f):
        u = f["u"] - _mm("...ck,...kv->...cv", f["w"], state)
        out = _mm("...ck,...kv->...cv", f["q_read"], state) + _mm("...cj,...jv->...cv", f["p"], u)
        new_state = f["decay_end"][..., None, None] * state + _mm("...ck,...cv->...kv", f["k_end"], u)
        return new_state, ((out, state) if keep_states else out)

    final_state, emitted = jax.lax.scan(step, state0, factors)
    outs, states = emitted if keep_states else (emitted, None)
    return final_state, outs, states


def _forward(cfg, q, k, v, g, beta, h0, *, keep_states):
    scale, chunk_size = cfg
    factors = _factors_chunk_major(q, k, v, g, beta, scale=scale, chunk_size=chunk_size)
    final_state, outs, states = _scan_forward(h0.astype(jnp.float32), factors, keep_states=keep_states)
    o = from_chunks(jnp.moveaxis(outs, 0, 2), q.shape[1]).astype(v.dtype)
    return (o, final_state), states


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gdr_xla(cfg, q, k, v, g, beta, h0):
    return _forward(cfg, q, k, v, g, beta, h0, keep_states=False)[0]


def _gdr_xla_fwd(cfg, q, k, v, g, beta, h0):
    outputs, states = _forward(cfg, q, k, v, g, beta, h0, keep_states=True)
    return outputs, (q, k, v, g, beta, h0, states)


def _gdr_xla_bwd(cfg, residuals, cotangents):
    scale, chunk_size = cfg
    q, k, v, g, beta, h0, states = residuals
    d_o, d_final = cotangents
    factors, pull_factors = jax.vjp(
        functools.partial(_factors_chunk_major, scale=scale, chunk_size=chunk_size), q, k, v, g, beta)
    num_chunks = factors["w"].shape[0]
    d_o = pad_time(d_o.astype(jnp.float32), num_chunks * chunk_size)
    d_out = jnp.moveaxis(to_chunks(d_o, chunk_size), 2, 0)                 # [N, B, H, C, V]

    def back_step(d_state, xs):
        f, d_out_n = xs
        d_u = (_mm("...ij,...iv->...jv", f["p"], d_out_n)
               + _mm("...ck,...kv->...cv", f["k_end"], d_state))
        d_entry = (_mm("...ck,...cv->...kv", f["q_read"], d_out_n)
                   + f["decay_end"][..., None, None] * d_state
                   - _mm("...ck,...cv->...kv", f["w"], d_u))
        return d_entry, (d_u, d_state)

    carried = {name: factors[name] for name in ("p", "k_end", "q_read", "w", "decay_end")}
    d_h0, (d_u, d_exit) = jax.lax.scan(back_step, d_final.astype(jnp.float32), (carried, d_out),
                                       reverse=True)
    u = factors["u"] - _mm("...ck,...kv->...cv", factors["w"], states)
    d_factors = dict(
        w=-_mm("...cv,...kv->...ck", d_u, states),
        u=d_u,
        q_read=_mm("...cv,...kv->...ck", d_out, states),
        p=_mm("...iv,...jv->...ij", d_out, u),
        k_end=_mm("...cv,...kv->...ck", u, d_exit),
        decay_end=jnp.sum(states * d_exit, axis=(-2, -1)),
    )
    return (*pull_factors(d_factors), d_h0.astype(h0.dtype))


_gdr_xla.defvjp(_gdr_xla_fwd, _gdr_xla_bwd)


def gated_delta_rule_xla(q, k, v, g, beta, *, initial_state=None, scale, chunk_size=64):
    """Chunked gated delta rule with the hand-written backward; contract of ``api.gated_delta_rule``."""
    bsz, _, heads, dk = q.shape
    dv = v.shape[-1]
    h0 = jnp.zeros((bsz, heads, dk, dv), jnp.float32) if initial_state is None else initial_state
    return _gdr_xla((float(scale), int(chunk_size)), q, k, v, g, beta, h0)
