"""The device mesh: the ``mesh`` config section and how it becomes a ``jax.sharding.Mesh``.

Axes ``(data, fsdp, model)``. ``data`` and ``fsdp`` split the batch; ``fsdp`` additionally
shards the d_model dimension of every weight matrix (ZeRO-3 style: XLA all-gathers a weight
before use and reduce-scatters its gradient); ``model`` splits heads (attention and Gated
DeltaNet) and the MLP hidden dimension, Megatron style. Because a fast-weight matrix belongs
to exactly one head and one sequence, the gated-delta-rule recurrence and the sleep passes
over a window need no communication: only the row-parallel output projections all-reduce,
once per block. Which array dim goes to which axis: :mod:`sleepjax.parallel.logical_axes`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np

MESH_AXES = ("data", "fsdp", "model")


def mesh_config_defaults() -> ml_collections.ConfigDict:
    """The ``mesh`` config section: sizes of the (data, fsdp, model) axes.

    ``-1`` means "all remaining devices" (at most one axis may use it). The product of the
    sizes must equal the number of devices (over all hosts).
    """
    return ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1})


def _mesh_cfg_items(mesh_cfg) -> dict[str, Any]:
    if isinstance(mesh_cfg, Mapping):
        items = dict(mesh_cfg)
    elif isinstance(mesh_cfg, ml_collections.ConfigDict):
        items = mesh_cfg.to_dict()
    else:
        raise ValueError(f"mesh: expected a ConfigDict or mapping with keys {MESH_AXES}, "
                         f"got {type(mesh_cfg).__name__}")
    unknown = sorted(set(items) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh: unknown key(s) {unknown}; known keys are {list(MESH_AXES)}")
    defaults = mesh_config_defaults()
    return {axis: items.get(axis, defaults[axis]) for axis in MESH_AXES}


def validate_mesh_config(mesh_cfg, num_devices: int | None = None) -> dict[str, int]:
    """Check the ``mesh`` section and resolve ``-1``; returns ``{axis: size}`` in mesh order.

    Raises ValueError naming ``mesh.<key>`` for a non-integer, zero, or < -1 size, for more
    than one ``-1``, or when the sizes do not fit ``num_devices`` (default: all devices).
    """
    items = _mesh_cfg_items(mesh_cfg)
    for axis, size in items.items():
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size == 0 or size < -1:
            raise ValueError(f"mesh.{axis}: must be a positive int or -1 (= all remaining devices), "
                             f"got {size!r}")
    wildcard = [a for a, s in items.items() if s == -1]
    if len(wildcard) > 1:
        raise ValueError(f"mesh.{wildcard[1]}: only one axis may be -1, got -1 for "
                         f"{', '.join('mesh.' + a for a in wildcard)}")
    if num_devices is None:
        num_devices = jax.device_count()
    fixed = int(np.prod([s for s in items.values() if s != -1]))
    if wildcard:
        if num_devices % fixed:
            named = ", ".join(f"mesh.{a}={s}" for a, s in items.items() if s != -1)
            raise ValueError(f"mesh.{wildcard[0]}: -1 cannot be resolved because the product of "
                             f"{named} ({fixed}) does not divide the {num_devices} devices")
        items[wildcard[0]] = num_devices // fixed
    elif fixed != num_devices:
        largest = max(items, key=lambda a: items[a])
        raise ValueError(f"mesh.{largest}: the mesh {items} has {fixed} devices but {num_devices} "
                         f"are available; the product of mesh.data * mesh.fsdp * mesh.model must "
                         f"equal the device count (set one axis to -1 to absorb the rest)")
    return {a: int(s) for a, s in items.items()}


def make_mesh(mesh_cfg, devices: Sequence[Any] | None = None) -> jax.sharding.Mesh:
    """Build the (data, fsdp, model) mesh from the ``mesh`` config section.

    Axes are ``AxisType.Auto``: jit propagates shardings from the declared in/out shardings
    (GSPMD), and ``model`` is the minor axis so model-parallel groups are neighbouring devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = validate_mesh_config(mesh_cfg, num_devices=len(devices))
    return jax.make_mesh(tuple(shape[a] for a in MESH_AXES), MESH_AXES,
                         axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def validate_model_for_mesh(model_cfg, mesh) -> None:
    """Raise ValueError if the model cannot be split over ``mesh.model`` without cutting heads.

    Attention query and key/value heads, GDN key and value heads and the MLP hidden size must
    be divisible by the model axis.
    """
    model_size = mesh.shape["model"]
    if model_size == 1:
        return
    checks = []
    if "A" in model_cfg.mixer_pattern:
        checks.append(("model.attn_heads", model_cfg.attn_heads))
        checks.append(("model.attn_kv_heads", model_cfg.attn_kv_heads))
    checks.append(("model.gdn_heads", model_cfg.gdn_heads))
    checks.append(("model.gdn_value_heads", model_cfg.gdn_value_heads))
    checks.append(("model.mlp_hidden", model_cfg.mlp_hidden))
    for name, value in checks:
        if value % model_size:
            raise ValueError(f"{name}: must be divisible by mesh.model={model_size} so that every "
                             f"head lives on one device (got {value})")
