"""Logical array axes -> mesh axes, and the PartitionSpecs that follow for arrays and pytrees.

Arrays name their dims with logical axes (``batch``, ``heads``, ``mlp``, ``vocab``, ``embed``,
...): parameters where they are declared (:mod:`sleepjax.models.params`), activations where
they are constrained (:mod:`sleepjax.parallel.activations`), states in ordered
``(regex on the '/'-joined leaf path, logical axes)`` rule tables
(:mod:`sleepjax.parallel.state_shardings`). :data:`LOGICAL_AXIS_RULES` is the one map from
those names to the axes of the (data, fsdp, model) mesh (:mod:`sleepjax.parallel.mesh`).
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

# Logical axis -> mesh axis (or tuple of mesh axes). ``None`` = replicated.
LOGICAL_AXIS_RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),   # examples are split over every non-model axis
    "embed": "fsdp",             # d_model dim of weights: FSDP-sharded
    "heads": "model",            # attention / GDN heads (and their packed head*dim axes)
    "mlp": "model",              # SwiGLU hidden dim
    "vocab": "model",            # embedding rows / LM-head columns
    "length": None,              # sequence / window axis: never split (the recurrence is sequential)
    "head_dim": None,            # K / V of one head stay together (a fast-weight matrix is local)
}

# Logical axes that MUST divide their mesh axes: splitting them unevenly would cut a head in
# half, which puts collectives inside the recurrence. The others fall back to replication
# (e.g. a vocabulary of 3 symbols is simply not split).
STRICT_LOGICAL_AXES = frozenset({"heads", "mlp"})

Rules = Sequence[tuple[str, tuple[Any, ...]]]


def manual_axes(mesh) -> frozenset:
    """Names of ``mesh``'s axes of type ``AxisType.Manual`` (inside a ``shard_map`` over them)."""
    types = getattr(mesh, "axis_types", None) or ()
    return frozenset(name for name, kind in zip(mesh.axis_names, types)
                     if kind == jax.sharding.AxisType.Manual)


def mesh_axes_of(logical_axis: str | None, mesh) -> tuple[str, ...]:
    """The mesh axes that split ``logical_axis`` on ``mesh`` (only axes it has, of size > 1).

    Axes already manual (inside a shard_map over them, see ``data_parallel``) are left out:
    arrays there are per-shard, and specs may only name the axes still left to the compiler.
    """
    if logical_axis is None:
        return ()
    if logical_axis not in LOGICAL_AXIS_RULES:
        raise ValueError(f"unknown logical axis {logical_axis!r}; known: {sorted(LOGICAL_AXIS_RULES)}")
    target = LOGICAL_AXIS_RULES[logical_axis]
    if target is None:
        return ()
    axes = (target,) if isinstance(target, str) else tuple(target)
    manual = manual_axes(mesh)
    return tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1 and a not in manual)


def mesh_axis_size(mesh, logical_axis: str) -> int:
    """Number of devices a logical axis is split over on ``mesh`` (1 if replicated)."""
    return int(np.prod([mesh.shape[a] for a in mesh_axes_of(logical_axis, mesh)], dtype=int))


def logical_to_spec(logical_axes: Sequence[Any], shape: Sequence[int], mesh,
                    *, name: str = "array") -> P:
    """PartitionSpec for an array of ``shape`` whose dims carry ``logical_axes``.

    ``logical_axes`` names every dim, or contains one ``...`` standing for any number of
    replicated dims (``("batch", ...)``: batch-leading array of any rank). An array whose rank
    does not fit the rule (e.g. a factored optimiser moment) is replicated. Dims not divisible
    by their mesh axes are replicated, except for STRICT_LOGICAL_AXES, which raise a ValueError
    naming ``name``.
    """
    rank = len(shape)
    logical = tuple(logical_axes)
    if Ellipsis in logical:
        cut = logical.index(Ellipsis)
        head, tail = logical[:cut], logical[cut + 1:]
        if len(head) + len(tail) > rank:
            return P()
        logical = head + (None,) * (rank - len(head) - len(tail)) + tail
    elif len(logical) != rank:
        return P()
    entries = []
    for dim, (size, ax) in enumerate(zip(shape, logical)):
        mesh_axes = mesh_axes_of(ax, mesh)
        split = int(np.prod([mesh.shape[a] for a in mesh_axes], dtype=int))
        if split > 1 and size % split:
            if ax in STRICT_LOGICAL_AXES:
                raise ValueError(
                    f"{name}: dim {dim} (logical axis {ax!r}, size {size}) of shape {tuple(shape)} is "
                    f"not divisible by mesh axes {mesh_axes} of size {split}; choose mesh.model "
                    f"dividing the number of heads / MLP width")
            mesh_axes = ()
        entries.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    while entries and entries[-1] is None:
        entries.pop()
    return P(*entries)


def path_to_str(path: Iterable[Any]) -> str:
    """'/'-joined names of a ``jax.tree_util`` key path (dict keys, attributes, indices)."""
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            parts.append(str(key.key))
        else:
            parts.append(str(key))
    return "/".join(parts)


def logical_axes_for(path: str, rules: Rules) -> tuple[Any, ...]:
    """Logical axes the first rule whose regex ``re.search``-es ``path`` assigns (``()`` if none)."""
    for pattern, logical in rules:
        if re.search(pattern, path):
            return logical
    return ()


def _shape_of(leaf) -> tuple[int, ...]:
    return tuple(getattr(leaf, "shape", np.shape(leaf)))


def tree_partition_specs(tree, mesh, rules: Rules):
    """PartitionSpec for every leaf of ``tree`` (arrays or ``jax.ShapeDtypeStruct``)."""
    def spec(path, leaf):
        name = path_to_str(path)
        shape = _shape_of(leaf)
        if not shape:                      # scalars (step counters, optax counts): replicated
            return P()
        return logical_to_spec(logical_axes_for(name, rules), shape, mesh, name=name)
    return jax.tree_util.tree_map_with_path(spec, tree)


def tree_shardings(tree, mesh, rules: Rules):
    """NamedSharding for every leaf of ``tree`` under ``rules``."""
    return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s),
                                  tree_partition_specs(tree, mesh, rules),
                                  is_leaf=lambda x: isinstance(x, P))


def with_shardings(abstract_tree, shardings):
    """``jax.ShapeDtypeStruct`` tree carrying ``shardings``: the restore target for orbax."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(_shape_of(x), x.dtype, sharding=s),
        abstract_tree, shardings)


def batch_spec(mesh=None) -> P:
    """Batch arrays are split on dim 0 over the batch axes (data, fsdp)."""
    if mesh is None:
        return P(LOGICAL_AXIS_RULES["batch"])
    axes = mesh_axes_of("batch", mesh)
    return P(axes[0] if len(axes) == 1 else axes) if axes else P()


def replicated(mesh) -> NamedSharding:
    """NamedSharding of an array every device holds whole (metrics, scalars)."""
    return NamedSharding(mesh, P())
