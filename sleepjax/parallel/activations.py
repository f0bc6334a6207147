"""Sharding hints for activations inside traced code, by logical axes, under the active mesh.

The active mesh is the one set with ``jax.set_mesh`` (``jit_train_step`` does it); without
one every function here is the identity / answers ``None``, so model code calls them
unconditionally.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax

from sleepjax.parallel.logical_axes import logical_to_spec


def active_mesh(mesh=None):
    """``mesh``, else the mesh set with ``jax.set_mesh``; ``None`` when there is none."""
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    if mesh is None or getattr(mesh, "empty", False) or not mesh.shape:
        return None
    return mesh


def activation_mesh_axes(logical_axis: str, size: int, mesh=None):
    """PartitionSpec entry (None, an axis name, or a tuple of names) for one activation dim.

    ``mesh`` defaults to the active mesh (``jax.set_mesh``); without one the answer is None.
    Under ``AxisType.Auto`` meshes a tracer's type carries no sharding, so code that must wrap
    itself in ``shard_map`` (the Pallas gated delta rule) asks here how the batch / head dims
    of its inputs are laid out, e.g. ``activation_mesh_axes("heads", q.shape[2])``.
    """
    mesh = active_mesh(mesh)
    if mesh is None:
        return None
    spec = logical_to_spec((logical_axis,), (size,), mesh, name=f"{logical_axis} dim")
    return spec[0] if len(spec) else None


def constrain(x, logical_axes: Sequence[Any]):
    """Hint the sharding of an activation by logical axes; a no-op without an active mesh.

    Model code may call this (e.g. ``constrain(S, ("batch", "heads", None, None))``) so that
    XLA never re-shards a fast-weight state inside a loop.
    """
    mesh = active_mesh()
    if mesh is None:
        return x
    spec = logical_to_spec(logical_axes, x.shape, mesh, name="constrain")
    return jax.lax.with_sharding_constraint(x, spec)
