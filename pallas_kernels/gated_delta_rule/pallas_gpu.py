"""GPU (Triton) kernels of the gated delta rule, forward and backward.

Triton runs every grid point as an independent program, so a state cannot be carried
across a grid axis; instead the grid is ``(B, H)`` and each program walks its chunks with
a ``fori_loop``, keeping the ``[K, V]`` state (forward) or its cotangent dS (backward, chunks
in reverse) in registers and reading one ``[C, D]`` slice of its sequence per step. For
training the forward also writes each chunk's entry state (``[B, H, N*K, V]``), which the
backward reads back. Inputs arrive prepared by ``pallas._prepare``: float32, heads-major
``[B, H, Tp, D]``, K, V and the chunk padded to powers of two >= 16 (Triton ``dot`` needs
dims >= 16 and every tensor a power-of-two size).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.gated_delta_rule.chunk_body import gdr_chunk, gdr_chunk_vjp


def _forward_kernel(q_ref, k_ref, v_ref, g_ref, beta_ref, h0_ref, o_ref, final_ref, *states_ref,
                    scale, chunk, num_chunks):
    dk = q_ref.shape[-1]

    def step(n, state):
        rows = pl.ds(pl.multiple_of(n * chunk, chunk), chunk)
        if states_ref:
            states_ref[0][pl.ds(pl.multiple_of(n * dk, dk), dk), :] = state
        out, new_state = gdr_chunk(q_ref[rows, :], k_ref[rows, :], v_ref[rows, :], g_ref[rows, :],
                                   beta_ref[rows, :], state, scale=scale)
        o_ref[rows, :] = out.astype(o_ref.dtype)
        return new_state

    final_ref[...] = jax.lax.fori_loop(0, num_chunks, step, h0_ref[...])


def _num_warps(chunk, dk, dv):
    # Several [C, C] float32 tiles are live at once (decay, A, the inverse); more warps
    # spread them over more registers.
    return 4 if max(chunk, dk, dv) <= 32 else 8


def forward(q, k, v, g_cum, beta, h0, *, scale, chunk, interpret, keep_states=False):
    """Same contract as ``pallas_tpu.forward``."""
    bsz, heads, tp, dk = q.shape
    dv = v.shape[-1]
    num_chunks = tp // chunk
    seq_block = lambda d: pl.BlockSpec((None, None, tp, d), lambda b, h: (b, h, 0, 0))
    state_block = pl.BlockSpec((None, None, dk, dv), lambda b, h: (b, h, 0, 0))
    out_specs = [seq_block(dv), state_block]
    out_shape = [jax.ShapeDtypeStruct((bsz, heads, tp, dv), jnp.float32),
                 jax.ShapeDtypeStruct((bsz, heads, dk, dv), jnp.float32)]
    if keep_states:
        out_specs.append(pl.BlockSpec((None, None, num_chunks * dk, dv), lambda b, h: (b, h, 0, 0)))
        out_shape.append(jax.ShapeDtypeStruct((bsz, heads, num_chunks * dk, dv), jnp.float32))
    results = pl.pallas_call(
        functools.partial(_forward_kernel, scale=scale, chunk=chunk, num_chunks=num_chunks),
        grid=(bsz, heads),
        in_specs=[seq_block(dk), seq_block(dk), seq_block(dv), seq_block(1), seq_block(1), state_block],
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=pltriton.CompilerParams(num_warps=_num_warps(chunk, dk, dv), num_stages=1),
        interpret=interpret,
        name="gated_delta_rule_fwd_gpu",
    )(q, k, v, g_cum, beta, h0)
    return results[0], results[1], (results[2] if keep_states else None)


def _backward_kernel(q_ref, k_ref, v_ref, g_ref, beta_ref, states_ref, do_ref, dfinal_ref,
                     dq_ref, dk_ref, dv_ref, dg_ref, dbeta_ref, dh0_ref, *, scale, chunk, num_chunks):
    dk = q_ref.shape[-1]

    def step(i, d_state):
        n = num_chunks - 1 - i
        rows = pl.ds(pl.multiple_of(n * chunk, chunk), chunk)
        entry = states_ref[pl.ds(pl.multiple_of(n * dk, dk), dk), :]
        dq, dk_, dv, dg, dbeta, d_entry = gdr_chunk_vjp(
            q_ref[rows, :], k_ref[rows, :], v_ref[rows, :], g_ref[rows, :], beta_ref[rows, :], entry,
            do_ref[rows, :], d_state, scale=scale)
        dq_ref[rows, :] = dq
        dk_ref[rows, :] = dk_
        dv_ref[rows, :] = dv
        dg_ref[rows, :] = dg
        dbeta_ref[rows, :] = dbeta
        return d_entry

    dh0_ref[...] = jax.lax.fori_loop(0, num_chunks, step, dfinal_ref[...])


def backward(q, k, v, g_cum, beta, h0, states, d_o, d_final, *, scale, chunk, interpret):
    """Same contract as ``pallas_tpu.backward``."""
    del h0
    bsz, heads, tp, dk = q.shape
    dv = v.shape[-1]
    num_chunks = tp // chunk
    seq_block = lambda d: pl.BlockSpec((None, None, tp, d), lambda b, h: (b, h, 0, 0))
    state_block = pl.BlockSpec((None, None, dk, dv), lambda b, h: (b, h, 0, 0))
    states_block = pl.BlockSpec((None, None, num_chunks * dk, dv), lambda b, h: (b, h, 0, 0))
    seq_shape = lambda d: jax.ShapeDtypeStruct((bsz, heads, tp, d), jnp.float32)
    return tuple(pl.pallas_call(
        functools.partial(_backward_kernel, scale=scale, chunk=chunk, num_chunks=num_chunks),
        grid=(bsz, heads),
        in_specs=[seq_block(dk), seq_block(dk), seq_block(dv), seq_block(1), seq_block(1), states_block,
                  seq_block(dv), state_block],
        out_specs=[seq_block(dk), seq_block(dk), seq_block(dv), seq_block(1), seq_block(1), state_block],
        out_shape=[seq_shape(dk), seq_shape(dk), seq_shape(dv), seq_shape(1), seq_shape(1),
                   jax.ShapeDtypeStruct((bsz, heads, dk, dv), jnp.float32)],
        compiler_params=pltriton.CompilerParams(num_warps=_num_warps(chunk, dk, dv), num_stages=1),
        interpret=interpret,
        name="gated_delta_rule_bwd_gpu",
    )(q, k, v, g_cum, beta, states, d_o, d_final))
