"""The chunked form of the gated delta rule (WY / UT representation), pure JAX: its one
forward, shared by the XLA form with a hand-written backward (``xla``) and the reference
differentiated by autodiff (``reference``).

Within a chunk of C tokens with chunk-local cumulative log-decay G_t = g_1 + ... + g_t and
entry state S, the recurrence (see ``api``) unrolls to

    S_t = exp(G_t) S + sum_{j<=t} exp(G_t - G_j) k_j u_j^T

where the "pseudo-values" u solve a unit lower-triangular system

    (I + A) U = diag(beta) (V - diag(exp(G)) K S),   A_tj = beta_t (k_t . k_j) exp(G_t - G_j), j < t.

With X = (I + A)^{-1} diag(beta) this is U = X V - (X diag(exp(G)) K) S = U_c - W S, so
every chunk's W and U_c (and the causal read-out matrix P) are state-independent and are
computed for a group of chunks at once (``chunk_factors``); only a scan over the group's
chunks carries the state (``chunk_step``):

    U = U_c - W S;   O = scale exp(G) Q S + P U;   S' = exp(G_C) S + (exp(G_C - G) K)^T U.

Layout: chunk-major groups ``[NG, G, B, H, C, ...]`` from the start, so the scans read their
factors without transposes. Numerics: decays, the solve and the state are float32 with
HIGHEST-precision matmuls; pairwise decay differences are masked *before* ``exp`` so no inf
(and hence no NaN in gradients) can appear for strong decays; we only ever exponentiate
non-positive numbers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def mm(spec, a, b):
    """``einsum`` at HIGHEST precision with float32 accumulation."""
    return jnp.einsum(spec, a, b, precision=HIGHEST, preferred_element_type=jnp.float32)


def pad_time(x, total):
    """Pad axis 1 (time) with zeros to length ``total``; zero q/k/v/beta and g=0 are no-op steps."""
    pad = total - x.shape[1]
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, pad)
    return jnp.pad(x, widths)


def group_geometry(seq, chunk, chunks_per_group):
    """(number of groups, chunks per group): at most ``chunks_per_group`` chunks a group."""
    num_chunks = max(1, -(-seq // chunk))
    per_group = max(1, min(chunks_per_group, num_chunks))
    return -(-num_chunks // per_group), per_group


def grouped_chunks(x, chunk, groups):
    """``[B, T, H, ...]`` -> float32 ``[NG, G, B, H, C, ...]`` (groups of G chunks of C
    tokens), zero-padded in time (zero q/k/v/beta and g = 0 are exact no-op steps)."""
    num_groups, per_group = groups
    x = pad_time(x.astype(jnp.float32), num_groups * per_group * chunk)
    bsz, _, heads = x.shape[:3]
    x = x.reshape((bsz, num_groups, per_group, chunk, heads) + x.shape[3:])
    return jnp.moveaxis(x, (1, 2, 4), (0, 1, 3))


def from_grouped_chunks(x, seq, dtype):
    """``[NG, G, B, H, C, ...]`` -> ``[B, T, H, ...]`` in ``dtype``, time padding dropped."""
    x = jnp.moveaxis(x, (0, 1, 3), (1, 2, 4))
    bsz, num_groups, per_group, csize, heads = x.shape[:5]
    return x.reshape((bsz, num_groups * per_group * csize, heads) + x.shape[5:])[:, :seq].astype(dtype)


def causal_masks(csize):
    """``(causal, strict)``: ``[C, C]`` masks of j <= t and j < t."""
    rows = jnp.arange(csize)[:, None]
    cols = jnp.arange(csize)[None, :]
    return rows >= cols, rows > cols


def _pairwise(q, k, g_cum):
    """Decay matrix D (causal, masked before exp so nothing overflows), K K^T and Q K^T."""
    causal, _ = causal_masks(q.shape[-2])
    diff = g_cum[..., :, None] - g_cum[..., None, :]
    decay = jnp.where(causal, jnp.exp(jnp.where(causal, diff, 0.0)), 0.0)
    return decay, mm("...ik,...jk->...ij", k, k), mm("...ik,...jk->...ij", q, k)


def _rhs(k, v, beta, gamma):
    return beta[..., None] * jnp.concatenate([v, gamma[..., None] * k], axis=-1)


def chunk_intermediates(q, k, v, g, beta, inverse=None):
    """What the factors and their backward share, every chunk of a group in parallel: G, D,
    K K^T, Q K^T, exp(G), the inverse X = (I + A)^{-1} (recomputed unless given) and
    Y = X R, R = diag(beta) [V | exp(G) K].

    Inputs are float32 in chunk layout: q, k ``[..., C, K]``, v ``[..., C, V]``, g, beta
    ``[..., C]`` (any leading batch dims).
    """
    g_cum = jnp.cumsum(g, axis=-1)
    decay, kk, qk = _pairwise(q, k, g_cum)
    if inverse is None:
        _, strict = causal_masks(q.shape[-2])
        inverse = unit_lower_inverse(jnp.where(strict, beta[..., :, None] * kk * decay, 0.0))
    gamma = jnp.exp(g_cum)
    solved = mm("...ij,...jd->...id", inverse, _rhs(k, v, beta, gamma))
    return dict(g_cum=g_cum, decay=decay, kk=kk, qk=qk, gamma=gamma, inverse=inverse, solved=solved)


def chunk_factors(q, k, v, mid, *, scale):
    """State-independent per-chunk quantities from :func:`chunk_intermediates` ``mid``:
      ``w`` [..., C, K], ``u`` [..., C, V]  (the WY factors, U = u - w S),
      ``q_read`` [..., C, K]  scale * exp(G) q, reads the entry state,
      ``p`` [..., C, C]       scale * causal (q k^T) * exp(G_t - G_j),
      ``k_end`` [..., C, K]   exp(G_C - G_j) k_j (exponent <= 0), writes into the exit state,
      ``decay_end`` [...]     exp(G_C).
    """
    dv = v.shape[-1]
    g_cum, gamma = mid["g_cum"], mid["gamma"]
    return dict(w=mid["solved"][..., dv:], u=mid["solved"][..., :dv], q_read=(scale * gamma)[..., None] * q,
                p=scale * mid["qk"] * mid["decay"], k_end=jnp.exp(g_cum[..., -1:] - g_cum)[..., None] * k,
                decay_end=gamma[..., -1])


def unit_lower_inverse(a_strict):
    """``(I + A)^{-1}`` for strictly lower-triangular ``A [..., C, C]``, float32, any C.

    Blocked doubling: with X_b the block-diagonal inverse at block size b, the inverse at
    size 2b is [[X11, 0], [-X22 M21 X11, X22]]. Every intermediate is a block of the final
    inverse, so nothing grows beyond the result (unlike Neumann powers A^m), and all work
    is batched HIGHEST-precision matmuls (~C^3/3 flops). We avoid LAPACK ``trsm``: its CPU
    custom call is slow under thread contention and has no benefit on accelerators.
    """
    csize = a_strict.shape[-1]
    size = 1 << max(0, (csize - 1).bit_length())
    if size != csize:  # pad with an identity block; the inverse's leading block is unchanged
        pad = [(0, 0)] * (a_strict.ndim - 2) + [(0, size - csize)] * 2
        a_strict = jnp.pad(a_strict, pad)
    batch = a_strict.shape[:-2]
    blocks = jnp.ones(batch + (size, 1, 1), a_strict.dtype)   # X_1: 1x1 identity blocks
    width = 1
    while width < size:
        num = size // (2 * width)
        a4 = a_strict.reshape(batch + (num, 2 * width, num, 2 * width))
        diag = jnp.moveaxis(jnp.diagonal(a4, axis1=-4, axis2=-2), -1, -3)  # [..., num, 2w, 2w]
        m21 = diag[..., width:, :width]
        pairs = blocks.reshape(batch + (num, 2, width, width))
        x11, x22 = pairs[..., 0, :, :], pairs[..., 1, :, :]
        x21 = -mm("...ij,...jk->...ik", x22, mm("...ij,...jk->...ik", m21, x11))
        top = jnp.concatenate([x11, jnp.zeros_like(x11)], axis=-1)
        bottom = jnp.concatenate([x21, x22], axis=-1)
        blocks = jnp.concatenate([top, bottom], axis=-2)
        width *= 2
    return blocks[..., 0, :csize, :csize]


def chunk_step(state, f):
    """Advance the state over one chunk. state [..., K, V]; f: one chunk of ``chunk_factors``.
    Returns ``(exit state, o [..., C, V])``."""
    u = f["u"] - mm("...ck,...kv->...cv", f["w"], state)
    out = mm("...ck,...kv->...cv", f["q_read"], state) + mm("...cj,...jv->...cv", f["p"], u)
    new_state = f["decay_end"][..., None, None] * state + mm("...ck,...cv->...kv", f["k_end"], u)
    return new_state, out


def _scan_chunks(state0, factors, *, keep_states):
    """Scan over chunks; returns (final_state, outs [N,...,C,V], entry states [N,...,K,V] | None)."""

    def step(state, f):
        new_state, out = chunk_step(state, f)
        return new_state, ((out, state) if keep_states else out)

    final_state, emitted = jax.lax.scan(step, state0, factors)
    outs, states = emitted if keep_states else (emitted, None)
    return final_state, outs, states


def chunked_forward(q, k, v, g, beta, h0, *, scale, chunk_size, chunks_per_group,
                    keep_residuals=False, remat=False):
    """The chunked form over ``[B, T, H, ...]`` inputs (q, k with H heads, as ``v``) from the
    state ``h0 [B, H, K, V]``; returns ``((o [B, T, H, V] in v's dtype, final_state f32),
    residuals)``.

    One scan over groups of ``chunks_per_group`` chunks carries the state: each step computes
    its group's factors in parallel, then scans its chunks. ``keep_residuals``: also return
    ``(entry states [NG, G, B, H, K, V], inverses [NG, G, B, H, C, C])`` for a hand-written
    backward (else None). ``remat``: rematerialise each group under differentiation (autodiff
    then keeps only the groups' entry states).
    """
    groups = group_geometry(q.shape[1], chunk_size, chunks_per_group)
    inputs = tuple(grouped_chunks(x, chunk_size, groups) for x in (q, k, v, g, beta))

    def group_step(state, group_inputs):
        qc, kc, vc, gc, bc = group_inputs
        mid = chunk_intermediates(qc, kc, vc, gc, bc)
        new_state, outs, states = _scan_chunks(state, chunk_factors(qc, kc, vc, mid, scale=scale),
                                               keep_states=keep_residuals)
        return new_state, ((outs, states, mid["inverse"]) if keep_residuals else outs)

    if remat:
        group_step = jax.checkpoint(group_step, prevent_cse=False)
    final_state, emitted = jax.lax.scan(group_step, h0.astype(jnp.float32), inputs)
    outs, residuals = (emitted[0], emitted[1:]) if keep_residuals else (emitted, None)
    return (from_grouped_chunks(outs, q.shape[1], v.dtype), final_state), residuals
