"""Chunk-level math of the gated delta rule (WY / UT representation), pure JAX.

Within a chunk of C tokens with chunk-local cumulative log-decay G_t = g_1 + ... + g_t and
entry state S, the recurrence (see ``sleepjax.ops.gated_delta_rule``) unrolls to

    S_t = exp(G_t) S + sum_{j<=t} exp(G_t - G_j) k_j u_j^T

where the "pseudo-values" u solve a unit lower-triangular system

    (I + A) U = diag(beta) (V - diag(exp(G)) K S),   A_tj = beta_t (k_t . k_j) exp(G_t - G_j), j < t.

With X = (I + A)^{-1} diag(beta) this is U = X V - (X diag(exp(G)) K) S = U_c - W S, so
every chunk's W and U_c (and the causal read-out matrix P) are state-independent and are
computed for all chunks at once (``chunk_factors``); only a short scan over chunks carries
the state (``chunk_step``):

    U = U_c - W S;   O = scale exp(G) Q S + P U;   S' = exp(G_C) S + (exp(G_C - G) K)^T U.

Numerics: decays, the solve and the state are float32 with HIGHEST-precision matmuls;
pairwise decay differences are masked *before* ``exp`` so no inf (and hence no NaN in
gradients) can appear for strong decays; we only ever exponentiate non-positive numbers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def _mm(spec, a, b):
    return jnp.einsum(spec, a, b, precision=_HIGHEST, preferred_element_type=jnp.float32)


def pad_time(x, total):
    """Pad axis 1 (time) with zeros to length ``total``; zero q/k/v/beta and g=0 are no-op steps."""
    pad = total - x.shape[1]
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, pad)
    return jnp.pad(x, widths)


def to_chunks(x, chunk_size):
    """``[B, Tp, H, ...] -> [B, H, N, C, ...]`` (Tp a multiple of C)."""
    bsz, tp, heads = x.shape[:3]
    x = jnp.moveaxis(x, 2, 1)
    return x.reshape((bsz, heads, tp // chunk_size, chunk_size) + x.shape[3:])


def from_chunks(x, seq):
    """``[B, H, N, C, D] -> [B, T, H, D]``, dropping the time padding beyond ``seq``."""
    bsz, heads, num, csize = x.shape[:4]
    x = x.reshape((bsz, heads, num * csize) + x.shape[4:])
    return jnp.moveaxis(x, 1, 2)[:, :seq]


def chunk_inputs(q, k, v, g, beta, chunk_size):
    """The op's inputs as float32, zero-padded to whole chunks, in chunk layout
    ``[B, H, N, C, ...]`` (padding steps are exact no-ops)."""
    num_chunks = max(1, -(-q.shape[1] // chunk_size))
    total = num_chunks * chunk_size
    return tuple(to_chunks(pad_time(x.astype(jnp.float32), total), chunk_size)
                 for x in (q, k, v, g, beta))


def chunk_factors(q, k, v, g, beta, *, scale):
    """State-independent per-chunk quantities, every chunk in parallel.

    Inputs are float32 in chunk layout: q, k ``[..., C, K]``, v ``[..., C, V]``,
    g, beta ``[..., C]`` (any leading batch dims). Returns a dict with
      ``w`` [..., C, K], ``u`` [..., C, V]  (the WY factors, U = u - w S),
      ``q_read`` [..., C, K]  scale * exp(G) q, reads the entry state,
      ``p`` [..., C, C]       scale * causal (q k^T) * exp(G_t - G_j),
      ``k_end`` [..., C, K]   exp(G_C - G_j) k_j, writes into the exit state,
      ``decay_end`` [...]     exp(G_C).
    """
    csize = q.shape[-2]
    g_cum = jnp.cumsum(g, axis=-1)
    rows = jnp.arange(csize)[:, None]
    cols = jnp.arange(csize)[None, :]
    causal = rows >= cols
    strict = rows > cols
    # Mask before exp: above the diagonal G_t - G_j > 0 and could overflow.
    diff = g_cum[..., :, None] - g_cum[..., None, :]
    decay = jnp.where(causal, jnp.exp(jnp.where(causal, diff, 0.0)), 0.0)

    kk = _mm("...ik,...jk->...ij", k, k)
    a_strict = jnp.where(strict, beta[..., :, None] * kk * decay, 0.0)
    gamma = jnp.exp(g_cum)
    rhs = beta[..., None] * jnp.concatenate([v, gamma[..., None] * k], axis=-1)
    solved = _mm("...ij,...jd->...id", unit_lower_inverse(a_strict), rhs)
    dv = v.shape[-1]
    u_c, w = solved[..., :dv], solved[..., dv:]

    qk = _mm("...ik,...jk->...ij", q, k)
    p = scale * qk * decay
    q_read = (scale * gamma)[..., None] * q
    g_end = g_cum[..., -1:]
    k_end = jnp.exp(g_end - g_cum)[..., None] * k   # g_end - g_cum <= 0
    return dict(w=w, u=u_c, q_read=q_read, p=p, k_end=k_end, decay_end=gamma[..., -1])


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
        x21 = -_mm("...ij,...jk->...ik", x22, _mm("...ij,...jk->...ik", m21, x11))
        top = jnp.concatenate([x11, jnp.zeros_like(x11)], axis=-1)
        bottom = jnp.concatenate([x21, x22], axis=-1)
        blocks = jnp.concatenate([top, bottom], axis=-2)
        width *= 2
    return blocks[..., 0, :csize, :csize]


def chunk_step(state, f):
    """Advance the state over one chunk. state [..., K, V]; f: one chunk of ``chunk_factors``."""
    u = f["u"] - _mm("...ck,...kv->...cv", f["w"], state)
    out = _mm("...ck,...kv->...cv", f["q_read"], state) + _mm("...cj,...jv->...cv", f["p"], u)
    new_state = f["decay_end"][..., None, None] * state + _mm("...ck,...cv->...kv", f["k_end"], u)
    return new_state, out


