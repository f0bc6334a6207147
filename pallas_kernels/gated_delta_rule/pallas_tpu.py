"""TPU (Mosaic) kernels of the gated delta rule, forward and backward.

Forward: grid ``(B, H, N)``; batch and head are parallel; the chunk axis is sequential
("arbitrary") and the running state lives in a VMEM scratch carried across it (the axlearn
SSD pattern). Each step reads one ``[C, K]`` / ``[C, V]`` tile, so VMEM use does not grow
with T. The final state is a revisited output block written at the last chunk; for
training the kernel also writes each chunk's entry state (``[B, H, N*K, V]``).
Backward: the same grid with the chunk axis walked in reverse by the index maps; a VMEM
scratch carries dS (the cotangent of the current chunk's exit state) and each step writes
the cotangents of its chunk's inputs; d(initial state) is written at the first chunk.
Inputs arrive prepared by ``pallas._prepare``: float32, heads-major ``[B, H, Tp, D]``,
K and V padded to 128 lanes, chunk a power of two >= 16 (a multiple of the 8 sublanes).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.gated_delta_rule.chunk_body import gdr_chunk, gdr_chunk_vjp

FEATURE_MULTIPLE = 128   # lane width


def _forward_kernel(q_ref, k_ref, v_ref, g_ref, beta_ref, h0_ref, o_ref, final_ref, *rest, scale):
    *states_ref, state_scr = rest          # states_ref: [] or [the entry-state output]
    chunk = pl.program_id(2)

    @pl.when(chunk == 0)
    def _():
        state_scr[...] = h0_ref[...]

    state = state_scr[...]
    if states_ref:
        states_ref[0][...] = state
    out, new_state = gdr_chunk(q_ref[...], k_ref[...], v_ref[...], g_ref[...], beta_ref[...],
                               state, scale=scale)
    o_ref[...] = out.astype(o_ref.dtype)
    state_scr[...] = new_state

    @pl.when(chunk == pl.num_programs(2) - 1)
    def _():
        final_ref[...] = new_state


def forward(q, k, v, g_cum, beta, h0, *, scale, chunk, interpret, keep_states=False):
    """q, k [B,H,Tp,Kp]; v [B,H,Tp,Vp]; g_cum, beta [B,H,Tp,1]; h0 [B,H,Kp,Vp] (all f32).

    Returns (o [B,H,Tp,Vp] f32, final_state [B,H,Kp,Vp] f32, entry states [B,H,N*Kp,Vp]
    f32 or None).
    """
    bsz, heads, tp, dk = q.shape
    dv = v.shape[-1]
    num_chunks = tp // chunk
    seq_block = lambda d: pl.BlockSpec((None, None, chunk, d), lambda b, h, n: (b, h, n, 0))
    state_block = pl.BlockSpec((None, None, dk, dv), lambda b, h, n: (b, h, 0, 0))
    out_specs = [seq_block(dv), state_block]
    out_shape = [jax.ShapeDtypeStruct((bsz, heads, tp, dv), jnp.float32),
                 jax.ShapeDtypeStruct((bsz, heads, dk, dv), jnp.float32)]
    if keep_states:
        out_specs.append(pl.BlockSpec((None, None, dk, dv), lambda b, h, n: (b, h, n, 0)))
        out_shape.append(jax.ShapeDtypeStruct((bsz, heads, num_chunks * dk, dv), jnp.float32))
    results = pl.pallas_call(
        functools.partial(_forward_kernel, scale=scale),
        grid=(bsz, heads, num_chunks),
        in_specs=[seq_block(dk), seq_block(dk), seq_block(dv), seq_block(1), seq_block(1), state_block],
        out_specs=out_specs,
        out_shape=out_shape,
        scratch_shapes=[pltpu.VMEM((dk, dv), jnp.float32)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret,
        name="gated_delta_rule_fwd_tpu",
    )(q, k, v, g_cum, beta, h0)
    return results[0], results[1], (results[2] if keep_states else None)


def _backward_kernel(q_ref, k_ref, v_ref, g_ref, beta_ref, states_ref, do_ref, dfinal_ref,
                     dq_ref, dk_ref, dv_ref, dg_ref, dbeta_ref, dh0_ref, dstate_scr, *, scale):
    step = pl.program_id(2)                # step 0 is the last chunk

    @pl.when(step == 0)
    def _():
        dstate_scr[...] = dfinal_ref[...]

    dq, dk, dv, dg, dbeta, d_entry = gdr_chunk_vjp(
        q_ref[...], k_ref[...], v_ref[...], g_ref[...], beta_ref[...], states_ref[...],
        do_ref[...], dstate_scr[...], scale=scale)
    dq_ref[...] = dq
    dk_ref[...] = dk
    dv_ref[...] = dv
    dg_ref[...] = dg
    dbeta_ref[...] = dbeta
    dstate_scr[...] = d_entry

    @pl.when(step == pl.num_programs(2) - 1)
    def _():
        dh0_ref[...] = d_entry


def backward(q, k, v, g_cum, beta, h0, states, d_o, d_final, *, scale, chunk, interpret):
    """Cotangents of ``forward``'s inputs (same layouts) from the entry states it kept and
    the cotangents ``d_o [B,H,Tp,Vp]``, ``d_final [B,H,Kp,Vp]``. ``h0`` only fixes shapes."""
    del h0
    bsz, heads, tp, dk = q.shape
    dv = v.shape[-1]
    num_chunks = tp // chunk
    reverse = lambda n: num_chunks - 1 - n
    seq_block = lambda d: pl.BlockSpec((None, None, chunk, d), lambda b, h, n: (b, h, reverse(n), 0))
    entry_block = pl.BlockSpec((None, None, dk, dv), lambda b, h, n: (b, h, reverse(n), 0))
    state_block = pl.BlockSpec((None, None, dk, dv), lambda b, h, n: (b, h, 0, 0))
    seq_shape = lambda d: jax.ShapeDtypeStruct((bsz, heads, tp, d), jnp.float32)
    return tuple(pl.pallas_call(
        functools.partial(_backward_kernel, scale=scale),
        grid=(bsz, heads, num_chunks),
        in_specs=[seq_block(dk), seq_block(dk), seq_block(dv), seq_block(1), seq_block(1), entry_block,
                  seq_block(dv), state_block],
        out_specs=[seq_block(dk), seq_block(dk), seq_block(dv), seq_block(1), seq_block(1), state_block],
        out_shape=[seq_shape(dk), seq_shape(dk), seq_shape(dv), seq_shape(1), seq_shape(1),
                   jax.ShapeDtypeStruct((bsz, heads, dk, dv), jnp.float32)],
        scratch_shapes=[pltpu.VMEM((dk, dv), jnp.float32)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret,
        name="gated_delta_rule_bwd_tpu",
    )(q, k, v, g_cum, beta, states, d_o, d_final))
