"""GPU (Triton) forward kernel of the gated delta rule.

Triton runs every grid point as an independent program, so a state cannot be carried
across a grid axis; instead the grid is ``(B, H)`` and each program walks its chunks with
a ``fori_loop``, keeping the ``[K, V]`` state in registers and reading one ``[C, D]``
slice of its sequence per step. Inputs arrive prepared by ``api.prepare``: float32,
heads-major ``[B, H, Tp, D]``, K, V and the chunk padded to powers of two >= 16 (Triton
``dot`` needs dims >= 16 and every tensor a power-of-two size).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.gated_delta_rule.chunk_body import gdr_chunk


def _kernel(q_ref, k_ref, v_ref, g_ref, beta_ref, h0_ref, o_ref, final_ref, *, scale, chunk,
            num_chunks):
    def step(n, state):
        rows = pl.ds(pl.multiple_of(n * chunk, chunk), chunk)
        out, new_state = gdr_chunk(q_ref[rows, :], k_ref[rows, :], v_ref[rows, :], g_ref[rows, :],
                                   beta_ref[rows, :], state, scale=scale)
        o_ref[rows, :] = out.astype(o_ref.dtype)
        return new_state

    final_ref[...] = jax.lax.fori_loop(0, num_chunks, step, h0_ref[...])


def forward(q, k, v, g_cum, beta, h0, *, scale, chunk, interpret):
    """Same contract as ``pallas_tpu.forward``."""
    bsz, heads, tp, dk = q.shape
    dv = v.shape[-1]
    seq_block = lambda d: pl.BlockSpec((None, None, tp, d), lambda b, h: (b, h, 0, 0))
    state_block = pl.BlockSpec((None, None, dk, dv), lambda b, h: (b, h, 0, 0))
    # Several [C, C] float32 tiles are live at once (decay, A, the inverse); more warps
    # spread them over more registers.
    num_warps = 4 if max(chunk, dk, dv) <= 32 else 8
    return pl.pallas_call(
        functools.partial(_kernel, scale=scale, chunk=chunk, num_chunks=tp // chunk),
        grid=(bsz, heads),
        in_specs=[seq_block(dk), seq_block(dk), seq_block(dv), seq_block(1), seq_block(1), state_block],
        out_specs=[seq_block(dv), state_block],
        out_shape=[jax.ShapeDtypeStruct((bsz, heads, tp, dv), jnp.float32),
                   jax.ShapeDtypeStruct((bsz, heads, dk, dv), jnp.float32)],
        compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=1),
        interpret=interpret,
        name="gated_delta_rule_fwd_gpu",
    )(q, k, v, g_cum, beta, h0)
