"""The Pallas gated delta rule: backend choice, layout/padding and the ``custom_vjp``
joining the forward and backward kernels.

Forward: a Pallas kernel (``pallas_tpu`` on TPU, ``pallas_gpu`` (Triton) on GPU; on CPU
the TPU kernel runs with ``interpret=True`` so CI exercises it). Backward, by
``backward=``:
  ``"pallas"`` (default): the forward kernel also writes every chunk's entry state; a
    backward kernel walks the chunks in reverse carrying dS and computes every input's
    cotangent chunk by chunk (``chunk_body.gdr_chunk_vjp``), the initial state's included.
  ``"xla"``: ``jax.vjp`` of the chunked XLA form (``xla.py``), which recomputes the chunk
    factors instead of storing any kernel output.
Inputs sharded over a multi-device mesh run under ``jax.shard_map`` (``sharding.py``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels.gated_delta_rule import pallas_gpu, pallas_tpu, xla
from pallas_kernels.gated_delta_rule.sharding import shard_over_batch_and_heads

BACKENDS = ("tpu", "gpu")
BACKWARDS = ("pallas", "xla")
_MIN_TILE = 16   # Triton dot needs every dim >= 16; also a multiple of TPU's 8 sublanes


class KernelConfig(NamedTuple):
    scale: float
    chunk_size: int      # the caller's chunk size (used by the recomputing XLA backward)
    backend: str         # "tpu" | "gpu": which kernels
    interpret: object    # bool, or pltpu.InterpretParams for the TPU kernels
    backward: str        # "pallas" | "xla"


def _next_pow2(n):
    return 1 << max(0, (int(n) - 1).bit_length())


def _round_up(n, m):
    return -(-int(n) // m) * m


def kernel_geometry(backend, chunk_size, dk, dv):
    """(chunk, K_pad, V_pad) the kernels run at: power-of-two chunk >= 16; features padded
    to 128 lanes on TPU and to powers of two >= 16 on GPU. Padding never changes results."""
    chunk = max(_MIN_TILE, _next_pow2(chunk_size))
    if backend == "tpu":
        return chunk, _round_up(dk, pallas_tpu.FEATURE_MULTIPLE), _round_up(dv, pallas_tpu.FEATURE_MULTIPLE)
    return chunk, max(_MIN_TILE, _next_pow2(dk)), max(_MIN_TILE, _next_pow2(dv))


def _platform(arrays):
    """Platform of the inputs' devices when they are concrete, else the default backend."""
    for x in arrays:
        if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
            try:
                return next(iter(x.devices())).platform
            except (AttributeError, RuntimeError, StopIteration):
                break
    return jax.default_backend()


def select_backend(arrays, backend=None, interpret=None):
    """Kernel flavour and interpret flag: TPU -> Mosaic kernel, GPU -> Triton kernel,
    CPU -> interpret mode (TPU kernel unless ``backend`` names another)."""
    platform = _platform(arrays)
    if backend is None:
        backend = "gpu" if platform in ("gpu", "cuda", "rocm") else "tpu"
    if backend not in BACKENDS:
        raise ValueError(f"gated_delta_rule_pallas: `backend` must be one of {BACKENDS} or None, got {backend!r}")
    native = {"tpu": ("tpu",), "gpu": ("gpu", "cuda", "rocm")}[backend]
    if interpret is None:
        interpret = platform not in native
    # interpret=False off the kernel's hardware is allowed: it is how one lowers/exports
    # for TPU or GPU from a CPU host (``jax.export``); running it there would fail.
    # A ``pltpu.InterpretParams`` (TPU interpret mode) is passed through unchanged.
    return backend, (bool(interpret) if isinstance(interpret, (bool, int)) else interpret)


def _to_kernel_layout(x, total, width):
    """[B, T, H, D] float -> [B, H, Tp, Dp] float32, zero padded (zeros are no-op steps)."""
    x = jnp.moveaxis(x.astype(jnp.float32), 2, 1)
    pads = [(0, 0), (0, 0), (0, total - x.shape[2]), (0, width - x.shape[3])]
    return jnp.pad(x, pads)


def _geometry(cfg: KernelConfig, q, v):
    """(chunk, K_pad, V_pad, padded T) of the kernels for these inputs."""
    chunk, kp, vp = kernel_geometry(cfg.backend, cfg.chunk_size, q.shape[-1], v.shape[-1])
    return chunk, kp, vp, max(1, -(-q.shape[1] // chunk)) * chunk


def _prepare(cfg: KernelConfig, q, k, v, g, beta, h0):
    """The kernels' inputs: float32, heads-major ``[B, H, Tp, D]``, padded; g as the
    chunk-local cumulative log-decay (computed once here, outside the kernels)."""
    bsz, _, heads, _ = q.shape
    chunk, kp, vp, total = _geometry(cfg, q, v)
    g_ = _to_kernel_layout(g[..., None], total, 1)
    g_cum = jnp.cumsum(g_.reshape(bsz, heads, total // chunk, chunk), axis=-1).reshape(g_.shape)
    pad_state = [(0, 0), (0, 0), (0, kp - h0.shape[2]), (0, vp - h0.shape[3])]
    return (_to_kernel_layout(q, total, kp), _to_kernel_layout(k, total, kp), _to_kernel_layout(v, total, vp),
            g_cum, _to_kernel_layout(beta[..., None], total, 1), jnp.pad(h0.astype(jnp.float32), pad_state))


def _kernels(cfg: KernelConfig):
    return pallas_tpu if cfg.backend == "tpu" else pallas_gpu


def _forward(cfg: KernelConfig, q, k, v, g, beta, h0, *, keep_states):
    chunk = _geometry(cfg, q, v)[0]
    o, final, states = _kernels(cfg).forward(
        *_prepare(cfg, q, k, v, g, beta, h0), scale=cfg.scale, chunk=chunk, interpret=cfg.interpret,
        keep_states=keep_states)
    dk, dv = q.shape[-1], v.shape[-1]
    o = jnp.moveaxis(o[:, :, :q.shape[1], :dv], 1, 2).astype(v.dtype)
    return (o, final[:, :, :dk, :dv]), states


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gdr_pallas(cfg, q, k, v, g, beta, h0):
    return _forward(cfg, q, k, v, g, beta, h0, keep_states=False)[0]


def _gdr_pallas_fwd(cfg, q, k, v, g, beta, h0):
    outputs, states = _forward(cfg, q, k, v, g, beta, h0, keep_states=cfg.backward == "pallas")
    return outputs, (q, k, v, g, beta, h0, states)


def _gdr_pallas_bwd(cfg, residuals, cotangents):
    *inputs, states = residuals
    if cfg.backward == "xla":
        recompute = functools.partial(xla.gated_delta_rule_xla, scale=cfg.scale, chunk_size=cfg.chunk_size)
        _, pullback = jax.vjp(lambda q, k, v, g, beta, h0: recompute(q, k, v, g, beta, initial_state=h0),
                              *inputs)
        return pullback(cotangents)
    q, _, v, _, _, h0 = inputs
    d_o, d_final = cotangents
    chunk, kp, vp, total = _geometry(cfg, q, v)
    prepared, pull_prepare = jax.vjp(functools.partial(_prepare, cfg), *inputs)
    pad_state = [(0, 0), (0, 0), (0, kp - h0.shape[2]), (0, vp - h0.shape[3])]
    d_prepared = _kernels(cfg).backward(
        *prepared, states, _to_kernel_layout(d_o, total, vp), jnp.pad(d_final.astype(jnp.float32), pad_state),
        scale=cfg.scale, chunk=chunk, interpret=cfg.interpret)
    return pull_prepare(d_prepared)


_gdr_pallas.defvjp(_gdr_pallas_fwd, _gdr_pallas_bwd)


def gated_delta_rule_pallas(q, k, v, g, beta, *, initial_state=None, scale, chunk_size=64,
                            backend=None, interpret=None, backward="pallas", mesh_axes=None):
    """Gated delta rule with Pallas kernels; contract of ``api.gated_delta_rule``.

    Args beyond the common ones:
      backend: ``"tpu"`` (Mosaic) or ``"gpu"`` (Triton) kernels; default from the inputs'
        platform (CPU -> the TPU kernels in interpret mode).
      interpret: Pallas interpret mode; default True exactly when the kernels' hardware
        is not the inputs' platform. Pass False to lower/export for TPU/GPU from a CPU host,
        or a ``pltpu.InterpretParams`` to run the TPU kernels in TPU interpret mode (which
        simulates VMEM and can fill uninitialised memory with NaN).
      backward: ``"pallas"`` (backward kernel) or ``"xla"`` (recomputing XLA backward).
      mesh_axes: optional ``(batch_axes, head_axes)`` mesh-axis names (PartitionSpec
        entries) of the inputs' batch and head dims, for traced inputs on an Auto-axis mesh
        set with ``jax.set_mesh`` (their types carry no sharding to read).

    Inputs sharded over a multi-device mesh (batch and/or head axes; concrete arrays,
    tracers under explicit-axis sharding, or ``mesh_axes`` under an active mesh) run under
    ``jax.shard_map`` so each device runs the kernels on its own (batch, head) slice. With
    a multi-device mesh but no visible layout the kernels run replicated (correct, but
    every device does all the work).
    """
    if backward not in BACKWARDS:
        raise ValueError(f"gated_delta_rule_pallas: `backward` must be one of {BACKWARDS}, got {backward!r}")
    bsz, _, heads, dk = q.shape
    dv = v.shape[-1]
    h0 = jnp.zeros((bsz, heads, dk, dv), jnp.float32) if initial_state is None else initial_state
    backend, interpret = select_backend((q, k, v, g, beta, h0), backend, interpret)
    cfg = KernelConfig(scale=float(scale), chunk_size=int(chunk_size), backend=backend,
                       interpret=interpret, backward=backward)
    return shard_over_batch_and_heads(functools.partial(_gdr_pallas, cfg), q, k, v, g, beta, h0,
                                      mesh_axes=mesh_axes)
