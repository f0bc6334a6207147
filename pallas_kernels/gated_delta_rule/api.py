"""The gated delta rule's one dispatcher over its implementations (the fast-weight update
of a Gated DeltaNet layer).

Convention ("decay, then delta", as in flash-linear-attention; fla issue #885):

    S_t = exp(g_t) S_{t-1} + beta_t k_t (v_t - exp(g_t) S_{t-1}^T k_t)^T        S_t: [K, V]
    o_t = scale * S_t^T q_t

Equivalently S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T with a_t = exp(g_t).
The state and all decay arithmetic are float32 whatever the input dtype; the output
takes the dtype of ``v``.

Layout (flash-linear-attention's): q, k ``[B, T, Hk, K]``, v ``[B, T, H, V]``, g and beta
``[B, T, H]``, state ``[B, H, K, V]``. Grouped value heads (Qwen3.5, fla's GVA): ``H`` may be
a multiple of ``Hk``; key head ``i`` then serves value heads ``i*r .. (i+1)*r - 1``
(``r = H / Hk``), i.e. q and k are repeated along heads (``jnp.repeat``) before the update.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.gated_delta_rule import pallas, reference, xla

# "chunked": the XLA chunked form with its hand-written backward (the default);
# "chunked_reference": the same forward differentiated by autodiff through a remat scan.
IMPLS = ("recurrent", "chunked", "chunked_reference", "pallas")


def _shape_error(name: str, msg: str, **shapes) -> ValueError:
    seen = ", ".join(f"{k}={tuple(v)}" for k, v in shapes.items())
    return ValueError(f"gated_delta_rule: `{name}` {msg} (shapes seen: {seen})")


def validate_inputs(q, k, v, g, beta, initial_state, impl, chunk_size):
    """Raise ValueError naming the offending argument; returns (B, T, H, K, V)."""
    if impl not in IMPLS:
        raise ValueError(f"gated_delta_rule: `impl` must be one of {IMPLS}, got {impl!r}")
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"gated_delta_rule: `chunk_size` must be a positive int, got {chunk_size!r}")
    shapes = dict(q=q.shape, k=k.shape, v=v.shape, g=g.shape, beta=beta.shape)
    for name, arr, rank in (("q", q, 4), ("k", k, 4), ("v", v, 4), ("g", g, 3), ("beta", beta, 3)):
        if arr.ndim != rank:
            raise _shape_error(name, f"must have rank {rank}, got rank {arr.ndim}", **shapes)
    if k.shape != q.shape:
        raise _shape_error("k", "must have the same shape as q [B, T, Hk, K]", **shapes)
    bsz, seq, key_heads, dk = q.shape
    heads = v.shape[2]
    if v.shape[:2] != (bsz, seq) or heads % key_heads:
        raise _shape_error("v", "must be [B, T, H, V] with B, T matching q and H a multiple of "
                           "q's heads Hk", **shapes)
    dv = v.shape[3]
    if g.shape != (bsz, seq, heads):
        raise _shape_error("g", "must be [B, T, H] matching v", **shapes)
    if beta.shape != (bsz, seq, heads):
        raise _shape_error("beta", "must be [B, T, H] matching v", **shapes)
    if initial_state is not None and tuple(initial_state.shape) != (bsz, heads, dk, dv):
        raise _shape_error(
            "initial_state", f"must be [B, H, K, V] = {(bsz, heads, dk, dv)}",
            initial_state=initial_state.shape, **shapes)
    # Positive log-decays would make the state grow without bound. Only concrete
    # values can be checked (and only host-readable ones: not under jit, not an array
    # spread over other processes); elsewhere the caller's parameterisation guarantees it.
    readable = not isinstance(g, jax.core.Tracer) and (
        not isinstance(g, jax.Array) or g.is_fully_addressable)
    if readable:
        g_max = float(np.max(np.asarray(g))) if g.size else 0.0
        if g_max > 0.0:
            raise ValueError(
                f"gated_delta_rule: `g` is the log of a decay and must be <= 0, got max {g_max:.4g} "
                f"(shape {tuple(g.shape)})")
    return bsz, seq, heads, dk, dv


def gated_delta_rule(q, k, v, g, beta, *, initial_state=None, scale=None, chunk_size=64,
                     impl="chunked", mesh_axes=None):
    """Gated delta rule over a sequence; returns ``(o [B,T,H,V], final_state [B,H,K,V] f32)``.

    Args:
      q, k: ``[B, T, Hk, K]`` queries and keys (normally L2-normalised per head).
      v: ``[B, T, H, V]`` values, ``H`` a multiple of ``Hk`` (grouped value heads).
      g: ``[B, T, H]`` log-decay, ``<= 0`` (``0`` means no decay).
      beta: ``[B, T, H]`` write strength, normally in ``(0, 1)``.
      initial_state: ``[B, H, K, V]`` fast weights to start from (zeros if None).
      scale: multiplier of the read-out, default ``1/sqrt(K)``.
      chunk_size: chunk length of the chunked and Pallas forms (any T works; inputs are
        padded internally with exact no-op steps).
      impl: ``"recurrent"``: the reference, a float32 ``lax.scan`` over time (also the
        T = 1 decode path). ``"chunked"``: XLA WY/UT chunked form (``xla.py``): all chunks'
        intra-chunk work in parallel, one scan over chunks carrying the state, and a
        hand-written backward (one reverse scan carrying dS). ``"chunked_reference"``: the
        same math differentiated by autodiff through a rematerialised scan (less memory,
        slower). ``"pallas"``: Pallas kernels in both directions (``pallas.py``; Mosaic on
        TPU, Triton on GPU, interpret mode on CPU).
      mesh_axes: only for ``"pallas"``: ``(batch_axes, head_axes)`` mesh-axis names of the
        inputs' batch and head dims when traced inputs on an Auto-axis mesh carry no
        sharding (the kernels then run under ``jax.shard_map`` over those axes).

    Raises:
      ValueError: wrong ranks or shapes (the message names the argument and shows the
        shapes seen), ``initial_state`` not ``[B, H, K, V]``, unknown ``impl``, a bad
        ``chunk_size``, or (for concrete inputs) a positive ``g``.
    """
    _, _, heads, dk, _ = validate_inputs(q, k, v, g, beta, initial_state, impl, chunk_size)
    scale = float(dk) ** -0.5 if scale is None else float(scale)
    if q.shape[2] != heads:
        # grouped value heads: every implementation sees one key per fast-weight matrix
        # (the copies are [B, T, H, K], the size of v when K = V; autodiff sums their gradients)
        q, k = (jnp.repeat(a, heads // q.shape[2], axis=2) for a in (q, k))
    common = dict(initial_state=initial_state, scale=scale)
    if impl == "recurrent":
        return reference.gated_delta_rule_recurrent(q, k, v, g, beta, **common)
    if impl == "chunked":
        return xla.gated_delta_rule_xla(q, k, v, g, beta, chunk_size=int(chunk_size), **common)
    if impl == "chunked_reference":
        return reference.gated_delta_rule_chunked_reference(q, k, v, g, beta, chunk_size=int(chunk_size),
                                                            **common)
    return pallas.gated_delta_rule_pallas(q, k, v, g, beta, chunk_size=int(chunk_size), mesh_axes=mesh_axes,
                                          **common)
