"""Public entry of the Pallas gated delta rule: backend choice, layout/padding, the
``custom_vjp`` and the ``shard_map`` wrapping for multi-device inputs.

Forward: a Pallas kernel (``pallas_tpu`` on TPU, ``pallas_gpu`` (Triton) on GPU; on CPU
the TPU kernel runs with ``interpret=True`` so CI exercises it). Backward: exact, by
``jax.vjp`` of the pure-JAX chunked form (``reference.gated_delta_rule_chunked``), which
recomputes the chunk factors instead of storing them; it gives the gradients of every
input including ``initial_state``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from pallas_kernels.gated_delta_rule import pallas_gpu, pallas_tpu, reference

BACKENDS = ("tpu", "gpu")
_MIN_TILE = 16   # Triton dot needs every dim >= 16; also a multiple of TPU's 8 sublanes


class KernelConfig(NamedTuple):
    scale: float
    chunk_size: int      # the caller's chunk size (used by the recomputing backward)
    backend: str         # "tpu" | "gpu": which kernel
    interpret: object    # bool, or pltpu.InterpretParams for the TPU kernel


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


def _forward(cfg: KernelConfig, q, k, v, g, beta, h0):
    bsz, seq, heads, dk = q.shape
    dv = v.shape[-1]
    chunk, kp, vp = kernel_geometry(cfg.backend, cfg.chunk_size, dk, dv)
    total = max(1, -(-seq // chunk)) * chunk
    qk_ = [_to_kernel_layout(x, total, kp) for x in (q, k)]
    v_ = _to_kernel_layout(v, total, vp)
    g_ = _to_kernel_layout(g[..., None], total, 1)
    beta_ = _to_kernel_layout(beta[..., None], total, 1)
    # Chunk-local cumulative log-decay, float32, computed once outside the kernel.
    g_cum = jnp.cumsum(g_.reshape(bsz, heads, total // chunk, chunk), axis=-1).reshape(g_.shape)
    h0_ = jnp.pad(h0.astype(jnp.float32), [(0, 0), (0, 0), (0, kp - dk), (0, vp - dv)])
    kernel = pallas_tpu.forward if cfg.backend == "tpu" else pallas_gpu.forward
    o, final = kernel(*qk_, v_, g_cum, beta_, h0_, scale=cfg.scale, chunk=chunk, interpret=cfg.interpret)
    o = jnp.moveaxis(o[:, :, :seq, :dv], 1, 2).astype(v.dtype)
    return o, final[:, :, :dk, :dv]


def _chunked(cfg: KernelConfig, q, k, v, g, beta, h0):
    return reference.gated_delta_rule_chunked(
        q, k, v, g, beta, initial_state=h0, scale=cfg.scale, chunk_size=cfg.chunk_size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gdr_pallas(cfg, q, k, v, g, beta, h0):
    return _forward(cfg, q, k, v, g, beta, h0)


def _gdr_pallas_fwd(cfg, q, k, v, g, beta, h0):
    return _forward(cfg, q, k, v, g, beta, h0), (q, k, v, g, beta, h0)


def _gdr_pallas_bwd(cfg, residuals, cotangents):
    _, pullback = jax.vjp(functools.partial(_chunked, cfg), *residuals)
    return pullback(cotangents)


_gdr_pallas.defvjp(_gdr_pallas_fwd, _gdr_pallas_bwd)


# ----------------------------------------------------------------------------- sharding

def _named_sharding(x):
    """The NamedSharding of a concrete array, or of a traced one under explicit axes."""
    if isinstance(x, jax.core.Tracer):
        sharding = getattr(jax.typeof(x), "sharding", None)
    else:
        sharding = getattr(x, "sharding", None)
    if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
        return sharding
    return None


def _spec_entries(sharding, ndim):
    spec = tuple(sharding.spec) if sharding is not None else ()
    return spec + (None,) * (ndim - len(spec))


def _active_mesh():
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or getattr(mesh, "empty", False) or not mesh.shape or mesh.size <= 1:
        return None
    return mesh


def shard_map_specs(q, k, v, g, beta, h0, mesh_axes=None):
    """(mesh, batch_axes, head_axes) from the inputs' shardings, or None when single-device.

    Batch and head axes may be sharded (each (batch, head) recurrence is independent);
    time and feature axes must not be (that would need a cross-device state hand-off).
    ``mesh_axes`` = (batch_axes, head_axes) is the caller's layout for traced inputs on an
    ``AxisType.Auto`` mesh, whose types carry no sharding; it is used only when the inputs
    show no sharded batch/head axis and a multi-device mesh is active.
    """
    named = {"q": q, "k": k, "v": v, "g": g, "beta": beta, "initial_state": h0}
    shardings = {name: _named_sharding(x) for name, x in named.items()}
    found = [s for s in shardings.values() if s is not None]
    if not found:
        mesh = _active_mesh() if mesh_axes is not None else None
        return None if mesh is None else (mesh, *mesh_axes)
    # Which axes of each input hold batch / time / heads / features.
    roles = {"q": "bthf", "k": "bthf", "v": "bthf", "g": "bth", "beta": "bth", "initial_state": "bhff"}
    batch_axes = head_axes = None
    for name, sharding in shardings.items():
        if sharding is None:
            continue
        entries = _spec_entries(sharding, named[name].ndim)
        for role, entry in zip(roles[name], entries):
            if role in "tf" and entry is not None:
                raise ValueError(
                    f"gated_delta_rule_pallas: `{name}` is sharded along a "
                    f"{'time' if role == 't' else 'feature'} axis (spec {sharding.spec}, shape "
                    f"{tuple(named[name].shape)}); only batch and head axes may be sharded")
        b_entry, h_entry = entries[roles[name].index("b")], entries[roles[name].index("h")]
        if batch_axes is None and head_axes is None:
            batch_axes, head_axes = b_entry, h_entry
    if batch_axes is None and head_axes is None and mesh_axes is not None:
        batch_axes, head_axes = mesh_axes
    return found[0].mesh, batch_axes, head_axes


def gated_delta_rule_pallas(q, k, v, g, beta, *, initial_state=None, scale, chunk_size=64,
                            backend=None, interpret=None, mesh_axes=None):
    """Gated delta rule with Pallas forward kernels; contract of ``sleepjax.ops.gated_delta_rule``.

    Args beyond the common ones:
      backend: ``"tpu"`` (Mosaic) or ``"gpu"`` (Triton) kernel; default from the inputs'
        platform (CPU -> the TPU kernel in interpret mode).
      interpret: Pallas interpret mode; default True exactly when the kernel's hardware
        is not the inputs' platform. Pass False to lower/export for TPU/GPU from a CPU host,
        or a ``pltpu.InterpretParams`` to run the TPU kernel in TPU interpret mode (which
        simulates VMEM and can fill uninitialised memory with NaN).

      mesh_axes: optional ``(batch_axes, head_axes)`` mesh-axis names (PartitionSpec
        entries) of the inputs' batch and head dims, for traced inputs on an Auto-axis mesh
        set with ``jax.set_mesh`` (their types carry no sharding to read).

    Inputs sharded over a multi-device mesh (batch and/or head axes; concrete arrays,
    tracers under explicit-axis sharding, or ``mesh_axes`` under an active mesh) run under
    ``jax.shard_map`` so each device runs the kernel on its own (batch, head) slice. With
    a multi-device mesh but no visible layout the kernel runs replicated (correct, but
    every device does all the work).
    """
    bsz, _, heads, dk = q.shape
    dv = v.shape[-1]
    h0 = jnp.zeros((bsz, heads, dk, dv), jnp.float32) if initial_state is None else initial_state
    backend, interpret = select_backend((q, k, v, g, beta, h0), backend, interpret)
    cfg = KernelConfig(scale=float(scale), chunk_size=int(chunk_size), backend=backend, interpret=interpret)
    run = functools.partial(_gdr_pallas, cfg)
    layout = shard_map_specs(q, k, v, g, beta, h0, mesh_axes)
    if layout is None:
        return run(q, k, v, g, beta, h0)
    mesh, b_ax, h_ax = layout
    seq4, seq3, state = P(b_ax, None, h_ax, None), P(b_ax, None, h_ax), P(b_ax, h_ax, None, None)
    # Inside an enclosing shard_map (e.g. data parallelism made manual over "data") only the
    # axes still left to the compiler can be made manual here.
    types = getattr(mesh, "axis_types", None) or ()
    free = frozenset(name for name, kind in zip(mesh.axis_names, types)
                     if kind != jax.sharding.AxisType.Manual)
    axis_names = free if len(free) < len(mesh.axis_names) else frozenset()
    sharded = jax.shard_map(run, mesh=mesh, in_specs=(seq4, seq4, seq4, seq3, seq3, state),
                            out_specs=(seq4, state), axis_names=axis_names, check_vma=False)
    return sharded(q, k, v, g, beta, h0)
