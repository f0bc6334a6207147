"""TPU (Mosaic) forward kernel of the gated delta rule.

Grid ``(B, H, N)``: batch and head are parallel; the chunk axis is sequential
("arbitrary") and the running state lives in a VMEM scratch carried across it (the
axlearn SSD pattern). Each step reads one ``[C, K]`` / ``[C, V]`` tile, so VMEM use does
not grow with T. The final state is a revisited output block written at the last chunk.
Inputs arrive prepared by ``api.prepare``: float32, heads-major ``[B, H, Tp, D]``,
K and V padded to 128 lanes, chunk a power of two >= 16 (a multiple of the 8 sublanes).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.gated_delta_rule.chunk_body import gdr_chunk

FEATURE_MULTIPLE = 128   # lane width


def _kernel(q_ref, k_ref, v_ref, g_ref, beta_ref, h0_ref, o_ref, final_ref, state_scr, *, scale):
    chunk = pl.program_id(2)

    @pl.when(chunk == 0)
    def _():
        state_scr[...] = h0_ref[...]

    out, new_state = gdr_chunk(q_ref[...], k_ref[...], v_ref[...], g_ref[...], beta_ref[...],
                               state_scr[...], scale=scale)
    o_ref[...] = out.astype(o_ref.dtype)
    state_scr[...] = new_state

    @pl.when(chunk == pl.num_programs(2) - 1)
    def _():
        final_ref[...] = new_state


def forward(q, k, v, g_cum, beta, h0, *, scale, chunk, interpret):
    """q, k [B,H,Tp,Kp]; v [B,H,Tp,Vp]; g_cum, beta [B,H,Tp,1]; h0 [B,H,Kp,Vp] (all f32).

    Returns (o [B,H,Tp,Vp] f32, final_state [B,H,Kp,Vp] f32).
    """
    bsz, heads, tp, dk = q.shape
    dv = v.shape[-1]
    seq_block = lambda d: pl.BlockSpec((None, None, chunk, d), lambda b, h, n: (b, h, n, 0))
    state_block = pl.BlockSpec((None, None, dk, dv), lambda b, h, n: (b, h, 0, 0))
    return pl.pallas_call(
        functools.partial(_kernel, scale=scale),
        grid=(bsz, heads, tp // chunk),
        in_specs=[seq_block(dk), seq_block(dk), seq_block(dv), seq_block(1), seq_block(1), state_block],
        out_specs=[seq_block(dv), state_block],
        out_shape=[jax.ShapeDtypeStruct((bsz, heads, tp, dv), jnp.float32),
                   jax.ShapeDtypeStruct((bsz, heads, dk, dv), jnp.float32)],
        scratch_shapes=[pltpu.VMEM((dk, dv), jnp.float32)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret,
        name="gated_delta_rule_fwd_tpu",
    )(q, k, v, g_cum, beta, h0)
