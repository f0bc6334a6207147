"""Chunked gated delta rule in XLA with a hand-written backward (``jax.custom_vjp``).

Forward: ``chunk_math.chunked_forward``, the chunked form's one forward (each group's
factors at once, then a plain ``lax.scan`` over its chunks carrying the ``[K, V]`` state),
emitting each chunk's entry state. Residuals for the backward: the inputs, the entry states
(``N x K x V`` per head) and the chunks' inverses ``X = (I + A)^{-1}`` (``C`` floats per
token and head), as flash-linear-attention keeps.

Backward (autodiff through the rematerialised scan re-ran the forward scan twice and
differentiated every small op of the chunk step and of the blocked inverse):
  1. one reverse ``lax.scan`` carrying only dS, the cotangent of a chunk's exit state:
        dU = P^T dO + K_end dS;   dS_entry = Q_read^T dO + exp(G_C) dS - W^T dU
  2. the cotangents of the factors, batched over all chunks (U = U_c - W S):
        dW = -dU S^T, dU_c = dU, dQ_read = dO S^T, dP = dO U^T, dK_end = U dS^T
  3. those pulled back to q, k, v, g, beta by ``_factors_backward``, written out by hand;
     the inverse's adjoint needs no second inverse: with Y = X R solved for R,
     dR = X^T dY and dA = -strict(dR Y^T).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.gated_delta_rule.chunk_math import (causal_masks, chunk_factors, chunk_intermediates,
                                                        chunked_forward, from_grouped_chunks, group_geometry,
                                                        grouped_chunks, mm)
from pallas_kernels.gated_delta_rule.reference import gated_delta_rule_recurrent

# Chunks whose factors are computed together before the scan walks them: about 512 tokens,
# so the [C, C] intermediates of a group stay in cache (at T = 4096 the forward and
# forward+backward ran ~1.5-2x faster than with all chunks at once on the 2-core CPU).
TOKENS_PER_GROUP = 512
# Forward-only calls (no differentiation: sleep-free inference, evaluation) on CPU run the
# token recurrence below this T: the chunked forward only overtakes it between T = 1024 and
# 4096 there (benchmarks/RESULTS.md, "bench_gdr"). Accelerators always run the chunked form.
CPU_CHUNKED_FORWARD_MIN_T = 2048
FORWARDS = ("auto", "chunked", "recurrent")


def _factors_backward(q, k, v, beta, mid, d, *, scale):
    """Cotangents of q, k, v, g, beta (chunk-major) from those of the factors ``d``."""
    _, strict = causal_masks(q.shape[-2])
    dv = v.shape[-1]
    g_cum, decay, kk, qk, gamma = (mid[name] for name in ("g_cum", "decay", "kk", "qk", "gamma"))
    d_rhs = mm("...ji,...jd->...id", mid["inverse"], jnp.concatenate([d["u"], d["w"]], axis=-1))
    d_a = -jnp.where(strict, mm("...id,...jd->...ij", d_rhs, mid["solved"]), 0.0)
    d_rhs_v, d_rhs_w = d_rhs[..., :dv], d_rhs[..., dv:]
    k_dot_rhs_w = jnp.sum(k * d_rhs_w, axis=-1)
    d_beta = (jnp.sum(v * d_rhs_v, axis=-1) + gamma * k_dot_rhs_w
              + jnp.sum(d_a * kk * decay, axis=-1))
    d_gamma = beta * k_dot_rhs_w + scale * jnp.sum(q * d["q_read"], axis=-1)
    d_kk = beta[..., :, None] * d_a * decay                         # strictly lower
    d_qk = scale * d["p"] * decay                                   # causal
    d_decay = beta[..., :, None] * kk * d_a + scale * d["p"] * qk
    end_decay = jnp.exp(g_cum[..., -1:] - g_cum)
    d_end_decay = end_decay * jnp.sum(k * d["k_end"], axis=-1)

    d_q = mm("...ij,...jk->...ik", d_qk, k) + (scale * gamma)[..., None] * d["q_read"]
    d_k = (mm("...ij,...ik->...jk", d_qk, q) + mm("...ij,...jk->...ik", d_kk + jnp.swapaxes(d_kk, -1, -2), k)
           + (beta * gamma)[..., None] * d_rhs_w + end_decay[..., None] * d["k_end"])
    d_v = beta[..., None] * d_rhs_v
    # Through G: D_ij = exp(G_i - G_j), gamma = exp(G), exp(G_C - G), exp(G_C).
    d_pairs = d_decay * decay
    d_g_cum = (jnp.sum(d_pairs, axis=-1) - jnp.sum(d_pairs, axis=-2) + gamma * d_gamma - d_end_decay)
    d_last = jnp.sum(d_end_decay, axis=-1) + gamma[..., -1] * d["decay_end"]
    d_g_cum = d_g_cum.at[..., -1].add(d_last)
    d_g = jax.lax.cumsum(d_g_cum, axis=d_g_cum.ndim - 1, reverse=True)
    return d_q, d_k, d_v, d_g, d_beta


def _forward(cfg, q, k, v, g, beta, h0, *, keep_residuals):
    scale, chunk, chunks_per_group, _ = cfg
    return chunked_forward(q, k, v, g, beta, h0, scale=scale, chunk_size=chunk,
                           chunks_per_group=chunks_per_group, keep_residuals=keep_residuals)


def primal_form(forward, seq, platform):
    """Which form evaluates an undifferentiated call: "chunked" or "recurrent" (same values)."""
    if forward != "auto":
        return forward
    return "recurrent" if platform == "cpu" and seq < CPU_CHUNKED_FORWARD_MIN_T else "chunked"


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gdr_xla(cfg, q, k, v, g, beta, h0):
    # Under differentiation _gdr_xla_fwd runs instead (always the chunked form).
    if primal_form(cfg[3], q.shape[1], jax.default_backend()) == "recurrent":
        return gated_delta_rule_recurrent(q, k, v, g, beta, initial_state=h0, scale=cfg[0])
    return _forward(cfg, q, k, v, g, beta, h0, keep_residuals=False)[0]


def _gdr_xla_fwd(cfg, q, k, v, g, beta, h0):
    outputs, (states, inverses) = _forward(cfg, q, k, v, g, beta, h0, keep_residuals=True)
    return outputs, (q, k, v, g, beta, h0, states, inverses)


def _back_step(d_state, xs):
    """One chunk of the reverse scan: the cotangent of its entry state, and dU."""
    p, k_end, q_read, w, decay_end, d_out = xs
    d_u = mm("...ij,...iv->...jv", p, d_out) + mm("...ck,...kv->...cv", k_end, d_state)
    d_entry = (mm("...ck,...cv->...kv", q_read, d_out) + decay_end[..., None, None] * d_state
               - mm("...ck,...cv->...kv", w, d_u))
    return d_entry, (d_u, d_state)


def _gdr_xla_bwd(cfg, residuals, cotangents):
    scale, chunk, chunks_per_group, _ = cfg
    q, k, v, g, beta, h0, states, inverses = residuals
    d_o, d_final = cotangents
    groups = group_geometry(q.shape[1], chunk, chunks_per_group)
    inputs = tuple(grouped_chunks(x, chunk, groups) for x in (q, k, v, g, beta, d_o))

    def group_back(d_state, xs):
        qc, kc, vc, gc, bc, d_out, states_g, inverse = xs
        mid = chunk_intermediates(qc, kc, vc, gc, bc, inverse)
        f = chunk_factors(qc, kc, vc, mid, scale=scale)
        scanned = tuple(f[name] for name in ("p", "k_end", "q_read", "w", "decay_end")) + (d_out,)
        d_entry, (d_u, d_exit) = jax.lax.scan(_back_step, d_state, scanned, reverse=True)
        u = f["u"] - mm("...ck,...kv->...cv", f["w"], states_g)
        d_factors = dict(w=-mm("...cv,...kv->...ck", d_u, states_g), u=d_u,
                         q_read=mm("...cv,...kv->...ck", d_out, states_g),
                         p=mm("...iv,...jv->...ij", d_out, u), k_end=mm("...cv,...kv->...ck", u, d_exit),
                         decay_end=jnp.sum(states_g * d_exit, axis=(-2, -1)))
        return d_entry, _factors_backward(qc, kc, vc, bc, mid, d_factors, scale=scale)

    d_h0, grads = jax.lax.scan(group_back, d_final.astype(jnp.float32), inputs + (states, inverses),
                               reverse=True)
    seq = q.shape[1]
    return (*(from_grouped_chunks(x, seq, ref.dtype) for x, ref in zip(grads, (q, k, v, g, beta))),
            d_h0.astype(h0.dtype))


_gdr_xla.defvjp(_gdr_xla_fwd, _gdr_xla_bwd)


def gated_delta_rule_xla(q, k, v, g, beta, *, initial_state=None, scale, chunk_size=64,
                         chunks_per_group=None, forward="auto"):
    """Chunked gated delta rule with the hand-written backward; contract of ``api.gated_delta_rule``.

    ``chunks_per_group``: chunks whose factors are computed together (batched) before the
    scan walks them (default ``TOKENS_PER_GROUP // chunk_size``). ``forward``: the form of an
    undifferentiated call: ``"auto"`` (``primal_form``: the faster one measured on this
    platform), ``"chunked"`` or ``"recurrent"``; differentiated calls always run the chunked
    forward, whose residuals the backward needs.
    """
    if forward not in FORWARDS:
        raise ValueError(f"gated_delta_rule_xla: `forward` must be one of {FORWARDS}, got {forward!r}")
    bsz, _, heads, dk = q.shape
    dv = v.shape[-1]
    h0 = jnp.zeros((bsz, heads, dk, dv), jnp.float32) if initial_state is None else initial_state
    if chunks_per_group is None:
        chunks_per_group = max(1, TOKENS_PER_GROUP // int(chunk_size))
    cfg = (float(scale), int(chunk_size), int(chunks_per_group), forward)
    return _gdr_xla(cfg, q, k, v, g, beta, h0)
