"""Running a kernel over inputs sharded on a multi-device mesh: ``jax.shard_map`` over the
batch and head axes (Mosaic kernels cannot be partitioned automatically; every (batch,
head) recurrence is independent, so each device runs the kernel on its own slice).

The layout is read from the inputs' ``NamedSharding`` (concrete arrays, or tracers under
explicit-axis meshes). Under an ``AxisType.Auto`` mesh traced inputs carry no sharding;
then the caller says where batch and heads live (``mesh_axes``) - this package knows no
project's partition rules.
"""

from __future__ import annotations

import jax
from jax.sharding import NamedSharding, PartitionSpec as P


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




def shard_over_batch_and_heads(fn, q, k, v, g, beta, h0, *, mesh_axes=None):
    """``fn(q, k, v, g, beta, h0) -> (o, final_state)``, under ``jax.shard_map`` when the
    inputs (or ``mesh_axes`` under an active mesh) are sharded over a multi-device mesh."""
    layout = shard_map_specs(q, k, v, g, beta, h0, mesh_axes)
    if layout is None:
        return fn(q, k, v, g, beta, h0)
    mesh, b_ax, h_ax = layout
    seq4, seq3, state = P(b_ax, None, h_ax, None), P(b_ax, None, h_ax), P(b_ax, h_ax, None, None)
    # Inside an enclosing shard_map (e.g. data parallelism made manual over "data") only the
    # axes still left to the compiler can be made manual here.
    types = getattr(mesh, "axis_types", None) or ()
    free = frozenset(name for name, kind in zip(mesh.axis_names, types)
                     if kind != jax.sharding.AxisType.Manual)
    axis_names = free if len(free) < len(mesh.axis_names) else frozenset()
    sharded = jax.shard_map(fn, mesh=mesh, in_specs=(seq4, seq4, seq4, seq3, seq3, state),
                            out_specs=(seq4, state), axis_names=axis_names, check_vma=False)
    return sharded(q, k, v, g, beta, h0)
