"""One chunk of the gated delta rule as kernel-friendly array code, shared by the TPU
(Mosaic) and GPU (Triton) kernels.

Only operations that both Pallas backends lower are used: 2-D arrays (vectors are kept
as ``[C, 1]`` columns), iota masks built with shifts (no integer division), 2-D
transposes, ``dot`` at HIGHEST precision with float32 accumulation, elementwise ``exp``
and ``where`` and a masked column sum. No slicing of values and no triangular-solve
primitive: ``(I + A)^{-1}`` is built by the same blocked doubling as the pure-JAX form
(``chunk_math.unit_lower_inverse``), here with masks on full C x C tiles:
X <- X - X M_w X where M_w keeps A's lower-left w x w blocks inside each 2w diagonal
block. Every iterate is a block of the final inverse, so nothing overflows.

The backward kernels differentiate the same body: ``gdr_chunk_vjp`` is ``jax.vjp`` of
``gdr_chunk`` traced inside the kernel, so one definition of the chunk math serves both
directions and its transpose uses only the same kinds of operations (dots with transposed
operands, elementwise ops, row/column sums).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.gated_delta_rule.chunk_math import HIGHEST


def _dot(a, b):
    # 2-D ``dot`` rather than ``chunk_math.mm``'s einsum: what both Pallas backends lower
    return jnp.dot(a, b, precision=HIGHEST, preferred_element_type=jnp.float32)


def _iotas(size):
    rows = jax.lax.broadcasted_iota(jnp.int32, (size, size), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (size, size), 1)
    return rows, cols


def unit_lower_inverse_masked(a_strict):
    """``(I + A)^{-1}`` for a strictly lower ``A [C, C]``, C a power of two."""
    size = a_strict.shape[0]
    rows, cols = _iotas(size)
    inv = jnp.where(rows == cols, 1.0, 0.0).astype(jnp.float32)
    shift = 0
    while (1 << shift) < size:
        same_pair = jax.lax.shift_right_logical(rows, shift + 1) == jax.lax.shift_right_logical(cols, shift + 1)
        lower_half = (jax.lax.shift_right_logical(rows, shift) & 1) == 1
        upper_half = (jax.lax.shift_right_logical(cols, shift) & 1) == 0
        m_w = jnp.where(same_pair & lower_half & upper_half, a_strict, 0.0)
        inv = inv - _dot(inv, _dot(m_w, inv))
        shift += 1
    return inv


def gdr_chunk(q, k, v, g_cum, beta, state, *, scale):
    """Advance ``state [K, V]`` over one chunk; returns ``(o [C, V], new_state [K, V])``.

    q, k ``[C, K]``, v ``[C, V]`` float32; ``g_cum`` ``[C, 1]`` chunk-local cumulative
    log-decay; ``beta`` ``[C, 1]``. Padded rows (q = k = v = beta = 0, g = 0) are no-ops.
    """
    size = q.shape[0]
    rows, cols = _iotas(size)
    causal = rows >= cols
    strict = rows > cols
    g_rows = jnp.broadcast_to(g_cum, (size, size))          # [i, j] -> G_i
    g_cols = g_rows.T                                        # [i, j] -> G_j
    # Mask before exp: above the diagonal G_i - G_j > 0 could overflow.
    decay = jnp.where(causal, jnp.exp(jnp.where(causal, g_rows - g_cols, 0.0)), 0.0)

    k_t = k.T
    a_strict = jnp.where(strict, beta * _dot(k, k_t) * decay, 0.0)
    inv = unit_lower_inverse_masked(a_strict)
    gamma = jnp.exp(g_cum)                                   # [C, 1]
    u = _dot(inv, beta * v) - _dot(_dot(inv, (beta * gamma) * k), state)
    p = scale * _dot(q, k_t) * decay
    out = _dot((scale * gamma) * q, state) + _dot(p, u)

    last_row = jax.lax.broadcasted_iota(jnp.int32, g_cum.shape, 0) == size - 1
    g_end = jnp.sum(jnp.where(last_row, g_cum, 0.0), axis=0, keepdims=True)   # [1, 1]
    k_end = jnp.exp(g_end - g_cum) * k                       # exponent <= 0
    new_state = jnp.exp(g_end) * state + _dot(k_end.T, u)
    return out, new_state


def gdr_chunk_vjp(q, k, v, g_cum, beta, state, d_out, d_new_state, *, scale):
    """Cotangents ``(dq, dk, dv, dg_cum, dbeta, d_state)`` of ``gdr_chunk`` at these inputs
    for output cotangents ``d_out [C, V]`` and ``d_new_state [K, V]``."""
    _, pullback = jax.vjp(functools.partial(gdr_chunk, scale=scale), q, k, v, g_cum, beta, state)
    return pullback((d_out, d_new_state))
