"""Device mesh, partition rules and multi-host plumbing for sleepjax.

Everything about *where* arrays live is declared in this module and nowhere else:

* the mesh axes (``data``, ``fsdp``, ``model``) and how config values become a mesh,
* ``LOGICAL_AXIS_RULES``: logical array axes (``batch``, ``heads``, ``mlp``, ``vocab``,
  ``embed``) -> mesh axes,
* ``PARAM_RULES``: ordered (regex on the '/'-joined parameter path -> logical axes) rules,
  also applied to the optimiser state (whose leaves sit under paths that end with the
  parameter path they mirror),
* ``STREAM_STATE_RULES``: the same for the streaming-inference state (fast weights
  ``S [B, H, K, V]``: batch over data, heads over model).

Parallelism scheme. ``data`` and ``fsdp`` split the batch; ``fsdp`` additionally shards the
d_model dimension of every weight matrix (ZeRO-3 style: XLA all-gathers a weight before use
and reduce-scatters its gradient); ``model`` splits heads (attention and Gated DeltaNet) and
the MLP hidden dimension, Megatron style: q/k/v/gate projections are column-parallel, output
projections row-parallel. Because a fast-weight matrix belongs to exactly one head and one
sequence, the gated-delta-rule recurrence and the sleep passes over a window need no
communication: only the row-parallel output projections all-reduce, once per block.

Nothing here touches JAX global state at import; the only stateful call is
``initialize_distributed``, which must run before any other JAX call in a multi-process job.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "model")

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

# Ordered (regex, logical axes) rules; the first ``re.search`` hit wins. Logical axes name
# each dim of the array (``...`` = any number of replicated dims). Kernels are [in, out].
PARAM_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    # Embedding table [vocab, d_model] (also the tied LM head) and an untied head [d_model, vocab].
    (r"(^|/)embed/embedding$", ("vocab", "embed")),
    (r"(^|/)head/kernel$", ("embed", "vocab")),
    (r"(^|/)head/bias$", ("vocab",)),
    # Sliding-window attention: column-parallel q/k/v [d, H*D], row-parallel output [H*D, d].
    (r"(^|/)attn/w[qkv](/kernel)?$", ("embed", "heads")),
    (r"(^|/)attn/w[qkv]/bias$", ("heads",)),
    (r"(^|/)attn/wo(/kernel)?$", ("heads", "embed")),
    # Gated DeltaNet: every per-head projection (q, k, v, output gate g [d, H*K|H*V], decay a
    # and write strength b [d, H]) is column-parallel; the output projection row-parallel.
    (r"(^|/)gdn/w[qkvgab](/kernel)?$", ("embed", "heads")),
    (r"(^|/)gdn/w[qkvgab]/bias$", ("heads",)),
    (r"(^|/)gdn/wo(/kernel)?$", ("heads", "embed")),
    (r"(^|/)gdn/conv_[qkv](/kernel)?$", (None, "heads")),     # depthwise [W, C]
    (r"(^|/)gdn/conv_[qkv]/bias$", ("heads",)),
    (r"(^|/)gdn/(A_log|dt_bias)$", ("heads",)),               # [H]
    # SwiGLU MLP.
    (r"(^|/)mlp/w_(gate|up)(/kernel)?$", ("embed", "mlp")),
    (r"(^|/)mlp/w_(gate|up)/bias$", ("mlp",)),
    (r"(^|/)mlp/w_down(/kernel)?$", ("mlp", "embed")),
    # Everything else (norm scales incl. the GDN per-head-dim out_norm [V], scalars such as
    # step and optax counters, the PRNG key) is replicated.
    (r".*", ()),
)

# Streaming-inference state (``sleepjax.inference.StreamState``). Fast weights S [B, H, K, V]
# and the per-head KV caches are split batch-over-data, heads-over-model, so wake steps and
# sleeps on a mesh are the same per-shard computation as on one device. The short-conv caches
# of q, k, v ([B, W-1, H*D], heads-major channels) split on head boundaries like the
# projections that fill them.
STREAM_STATE_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"(^|/)fast_weights/[^/]+$", ("batch", "heads", "head_dim", "head_dim")),
    (r"(^|/)(kv_cache|prev_kv)/[^/]+/[01]$", ("batch", "length", "heads", "head_dim")),
    (r"(^|/)conv_cache/[^/]+/[qkv]$", ("batch", "length", "heads")),
    (r"(^|/)loop_input$", ("batch", "length", None)),
    (r".*", ("batch", ...)),   # anything else is batch-leading; scalars (position) are replicated
)


# --------------------------------------------------------------------------- config / mesh

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


def mesh_axis_size(mesh, logical_axis: str) -> int:
    """Number of devices a logical axis is split over on ``mesh`` (1 if replicated)."""
    return int(np.prod([mesh.shape[a] for a in _mesh_axes_of(logical_axis, mesh)], dtype=int))


def validate_model_for_mesh(model_cfg, mesh) -> None:
    """Raise ValueError if the model cannot be split over ``mesh.model`` without cutting heads.

    Attention heads, GDN heads and the MLP hidden size must be divisible by the model axis.
    """
    model_size = mesh.shape["model"]
    if model_size == 1:
        return
    checks = []
    if "A" in model_cfg.layer_pattern:
        checks.append(("model.attn_heads", model_cfg.attn_heads))
    checks.append(("model.gdn_heads", model_cfg.gdn_heads))
    checks.append(("model.mlp_hidden", model_cfg.mlp_hidden_dim))
    for name, value in checks:
        if value % model_size:
            raise ValueError(f"{name}: must be divisible by mesh.model={model_size} so that every "
                             f"head lives on one device (got {value})")


# --------------------------------------------------------------------------- rules -> specs

def _mesh_axes_of(logical_axis: str | None, mesh) -> tuple[str, ...]:
    if logical_axis is None:
        return ()
    if logical_axis not in LOGICAL_AXIS_RULES:
        raise ValueError(f"unknown logical axis {logical_axis!r}; known: {sorted(LOGICAL_AXIS_RULES)}")
    target = LOGICAL_AXIS_RULES[logical_axis]
    if target is None:
        return ()
    axes = (target,) if isinstance(target, str) else tuple(target)
    # Only axes this mesh has and that are actually split; keeps specs minimal and readable.
    # Axes already manual (inside a shard_map over them, see ``data_parallel``) are excluded:
    # arrays there are per-shard, and specs may only name the axes still left to the compiler.
    manual = manual_axes(mesh)
    return tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1 and a not in manual)


def manual_axes(mesh) -> frozenset:
    """Names of ``mesh``'s axes of type ``AxisType.Manual`` (inside a ``shard_map`` over them)."""
    types = getattr(mesh, "axis_types", None) or ()
    return frozenset(name for name, kind in zip(mesh.axis_names, types)
                     if kind == jax.sharding.AxisType.Manual)


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
        mesh_axes = _mesh_axes_of(ax, mesh)
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


def _match(rules, path: str) -> tuple[str | None, ...]:
    for pattern, logical in rules:
        if re.search(pattern, path):
            return logical
    return ()


def logical_axes_for(path: str, rules=PARAM_RULES) -> tuple[str | None, ...]:
    """Logical axes the first matching rule assigns to a '/'-joined path."""
    return _match(rules, path)


def _shape_of(leaf) -> tuple[int, ...]:
    return tuple(getattr(leaf, "shape", np.shape(leaf)))


def tree_partition_specs(tree, mesh, rules=PARAM_RULES):
    """PartitionSpec for every leaf of ``tree`` (arrays or ``jax.ShapeDtypeStruct``)."""
    def spec(path, leaf):
        name = path_to_str(path)
        shape = _shape_of(leaf)
        if not shape:                      # scalars (step counters, optax counts): replicated
            return P()
        return logical_to_spec(_match(rules, name), shape, mesh, name=name)
    return jax.tree_util.tree_map_with_path(spec, tree)


def tree_shardings(tree, mesh, rules=PARAM_RULES):
    """NamedSharding for every leaf of ``tree`` under ``rules``."""
    return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s),
                                  tree_partition_specs(tree, mesh, rules),
                                  is_leaf=lambda x: isinstance(x, P))


def params_shardings(abstract_params, mesh):
    """NamedShardings of a parameter tree (``{'params': ...}`` or the inner dict)."""
    return tree_shardings(abstract_params, mesh, PARAM_RULES)


def train_state_shardings(abstract_state, mesh, model_cfg=None):
    """NamedShardings for a whole TrainState (step, params, opt_state, rng).

    The optimiser state follows its parameter because optax nests a copy of the parameter
    tree under each moment (e.g. ``opt_state/0/mu/blocks_0/attn/wq/kernel``) and the rules
    match path suffixes; optax counters, the step and the PRNG key are replicated. Pass
    ``model_cfg`` to also check that heads divide ``mesh.model`` (clear error otherwise).
    """
    if model_cfg is not None:
        validate_model_for_mesh(model_cfg, mesh)
    return tree_shardings(abstract_state, mesh, PARAM_RULES)


def batch_spec(mesh=None) -> P:
    """Batch arrays are split on dim 0 over the batch axes (data, fsdp)."""
    if mesh is None:
        return P(LOGICAL_AXIS_RULES["batch"])
    axes = _mesh_axes_of("batch", mesh)
    return P(axes[0] if len(axes) == 1 else axes) if axes else P()


def batch_sharding(mesh) -> NamedSharding:
    """NamedSharding for every array of a training/eval batch ([B, ...], B over data*fsdp)."""
    return NamedSharding(mesh, batch_spec(mesh))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def stream_state_shardings(abstract_stream_state, mesh):
    """NamedShardings for the streaming-inference state (fast weights, KV/conv caches)."""
    return tree_shardings(abstract_stream_state, mesh, STREAM_STATE_RULES)


def with_shardings(abstract_tree, shardings):
    """``jax.ShapeDtypeStruct`` tree carrying ``shardings``: the restore target for orbax."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(_shape_of(x), x.dtype, sharding=s),
        abstract_tree, shardings)


# --------------------------------------------------------------------------- activations

def _active_mesh(mesh=None):
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
    mesh = _active_mesh(mesh)
    if mesh is None:
        return None
    spec = logical_to_spec((logical_axis,), (size,), mesh, name=f"{logical_axis} dim")
    return spec[0] if len(spec) else None


def constrain(x, logical_axes: Sequence[Any]):
    """Hint the sharding of an activation by logical axes; a no-op without an active mesh.

    Model code may call this (e.g. ``constrain(S, ("batch", "heads", None, None))``) so that
    XLA never re-shards a fast-weight state inside a loop. The active mesh is the one set with
    ``jax.set_mesh`` (``jit_train_step`` does it); without one this returns ``x`` unchanged.
    """
    mesh = _active_mesh()
    if mesh is None:
        return x
    spec = logical_to_spec(logical_axes, x.shape, mesh, name="constrain")
    return jax.lax.with_sharding_constraint(x, spec)


# --------------------------------------------------------------------------- data parallelism

# The mesh axis over which ``data_parallel`` computes per-shard gradients by hand. ``fsdp``
# also splits the batch but shards the parameters too, so it stays with the compiler.
GRADIENT_SYNC_AXIS = "data"


def batch_psum(tree):
    """Sum ``tree`` over the batch axes that are manual here (inside ``data_parallel``).

    Outside a ``shard_map`` over them (one device, or compiler-partitioned code) the batch is
    whole and this is the identity, so the same loss code serves both.
    """
    mesh = _active_mesh()
    axes = () if mesh is None else tuple(
        a for a in LOGICAL_AXIS_RULES["batch"] if a in manual_axes(mesh) and mesh.shape[a] > 1)
    return jax.lax.psum(tree, axes) if axes else tree


def data_parallel(per_shard: Callable, mesh=None) -> Callable:
    """``per_shard(params, batch) -> outputs`` run on each data shard under ``jax.shard_map``.

    The batch is split over ``GRADIENT_SYNC_AXIS`` by hand (the other mesh axes stay with the
    compiler); ``per_shard`` must reduce its outputs with :func:`batch_psum`, so they come
    back replicated. Why: under compiler (GSPMD) partitioning the gradient of a weight used
    inside the window / sleep ``scan`` is a partial sum per iteration, and XLA:CPU (and any
    backend without while-loop all-reduce code motion) all-reduces it on every iteration
    (measured 8.1 of 9.1 MiB per step inside loops on an 8x1 mesh). Here local gradients
    accumulate through the whole backward and are all-reduced once.

    Without an active multi-device ``data`` axis (``mesh`` default: ``jax.set_mesh``'s) this
    returns ``per_shard`` itself; so it does with ``fsdp > 1``, where the compiler keeps the
    gradient sync: a shard_map manual over ``data`` whose body still has FSDP-sharded weights
    aborts XLA's SPMD partitioner (jax 0.10.2, CPU: "Check failed: partition_group_list...").
    """

    def run(params, batch):
        active = _active_mesh(mesh)
        if (active is None or active.shape.get(GRADIENT_SYNC_AXIS, 1) <= 1
                or active.shape.get("fsdp", 1) > 1
                or GRADIENT_SYNC_AXIS in manual_axes(active)):
            return per_shard(params, batch)
        # check_vma=False: the gradient w.r.t. the replicated params is then the plain local
        # gradient; with check_vma=True JAX's AD would insert the psum itself where params
        # meet per-shard values, which may be inside the loops. ``batch_psum`` sums it once.
        return jax.shard_map(per_shard, mesh=active, in_specs=(P(), P(GRADIENT_SYNC_AXIS)),
                             out_specs=P(), axis_names=frozenset({GRADIENT_SYNC_AXIS}),
                             check_vma=False)(params, batch)

    return run


# --------------------------------------------------------------------------- steps / data

def jit_train_step(train_step: Callable, state_shardings, mesh, *, donate: bool = True) -> Callable:
    """``jax.jit`` of ``train_step(state, batch) -> (state, metrics)`` partitioned over ``mesh``.

    The state keeps ``state_shardings``, the batch is split over (data, fsdp), metrics come
    back replicated. The call runs under ``jax.set_mesh(mesh)`` so that ops which must be
    wrapped in ``shard_map`` (the Pallas kernels) and ``constrain`` see the mesh while tracing.
    """
    jitted = jax.jit(train_step,
                     in_shardings=(state_shardings, batch_sharding(mesh)),
                     out_shardings=(state_shardings, replicated(mesh)),
                     donate_argnums=(0,) if donate else ())

    def step(state, batch):
        with jax.set_mesh(mesh):
            return jitted(state, batch)

    step.jitted = jitted      # for .lower(...) / HLO inspection
    step.mesh = mesh
    return step


def host_shard_info(mesh=None) -> tuple[int, int]:
    """``(shard_index, shard_count)`` for this host's data loader (grain ``ShardOptions``).

    Without a mesh: ``(process_index, process_count)``. With a mesh, hosts that hold the same
    rows of the global batch (a model axis spanning hosts) get the same shard, so each distinct
    slice of the batch is read exactly once.
    """
    if mesh is None:
        return jax.process_index(), jax.process_count()
    row_blocks = mesh_axis_size(mesh, "batch")
    sharding = batch_sharding(mesh)
    index_map = sharding.devices_indices_map((row_blocks,))
    per_process: dict[int, set[int]] = {}
    for device, index in index_map.items():
        start = index[0].start or 0
        per_process.setdefault(device.process_index, set()).add(start)
    distinct = sorted({tuple(sorted(v)) for v in per_process.values()})
    mine = tuple(sorted(per_process[jax.process_index()]))
    return distinct.index(mine), len(distinct)


def make_global_batch(host_batch, mesh):
    """Host-local numpy batch (pytree of ``[b_local, ...]``) -> global ``jax.Array`` batch.

    Each host passes the rows its grain shard produced (``host_shard_info(mesh)``); the global
    batch has ``b_local * shard_count`` rows split over (data, fsdp).
    """
    sharding = batch_sharding(mesh)
    _, shard_count = host_shard_info(mesh)

    def to_global(path, x):
        x = np.asarray(x)
        if x.ndim == 0:
            raise ValueError(f"make_global_batch: batch leaf {path_to_str(path)!r} is a scalar; "
                             f"every batch array needs a leading batch dim")
        global_shape = (x.shape[0] * shard_count,) + x.shape[1:]
        split = mesh_axis_size(mesh, "batch")
        if global_shape[0] % split:
            raise ValueError(f"make_global_batch: batch leaf {path_to_str(path)!r} has global batch "
                             f"size {global_shape[0]}, not divisible by the {split} batch shards "
                             f"(mesh.data * mesh.fsdp)")
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree_util.tree_map_with_path(to_global, host_batch)


# --------------------------------------------------------------------------- multi-host

_CLUSTER_ENV_HINTS = (
    # (env var, predicate) pairs that mean "this process is one of several in a cluster that
    # jax.distributed.initialize() can auto-detect".
    ("TPU_WORKER_HOSTNAMES", lambda v: "," in v),        # Cloud TPU VM pod slice
    ("MEGASCALE_COORDINATOR_ADDRESS", bool),              # multi-slice TPU
    ("SLURM_NTASKS", lambda v: v.isdigit() and int(v) > 1),
    ("OMPI_COMM_WORLD_SIZE", lambda v: v.isdigit() and int(v) > 1),
)
# Manual launch without a scheduler (e.g. several GPU hosts): these three variables give the
# coordinates explicitly (JAX_COORDINATOR_ADDRESS is also read by JAX itself).
ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = (
    "JAX_COORDINATOR_ADDRESS", "SLEEPJAX_NUM_PROCESSES", "SLEEPJAX_PROCESS_ID")


def _cluster_detected(environ: Mapping[str, str]) -> bool:
    return any(pred(environ[name]) for name, pred in _CLUSTER_ENV_HINTS if name in environ)


def _int_env(environ, name):
    value = environ.get(name)
    if value is None:
        return None
    if not value.strip().lstrip("-").isdigit():
        raise ValueError(f"initialize_distributed: environment variable {name} must be an int, "
                         f"got {value!r}")
    return int(value)


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, local_device_ids=None,
                           environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """Join a multi-process JAX job; a no-op for a single process. Returns (index, count).

    * Explicit coordinates -- the three arguments, or the environment variables
      ``JAX_COORDINATOR_ADDRESS``, ``SLEEPJAX_NUM_PROCESSES``, ``SLEEPJAX_PROCESS_ID`` -- call
      ``jax.distributed.initialize`` with them (several GPU hosts without a scheduler).
    * Otherwise, if the environment shows a cluster that JAX detects by itself (Cloud TPU pod
      slice, SLURM or Open MPI with more than one task), ``jax.distributed.initialize()``.
    * Otherwise nothing happens (one process driving all local devices).

    Call it on every process before any other JAX call that touches devices.
    """
    environ = os.environ if environ is None else environ
    if coordinator_address is None and num_processes is None and process_id is None:
        coordinator_address = environ.get(ENV_COORDINATOR) if ENV_NUM_PROCESSES in environ else None
        num_processes = _int_env(environ, ENV_NUM_PROCESSES)
        process_id = _int_env(environ, ENV_PROCESS_ID)
    explicit = {"coordinator_address": coordinator_address, "num_processes": num_processes,
                "process_id": process_id}
    given = [k for k, v in explicit.items() if v is not None]
    if given and len(given) < 3:
        missing = [k for k, v in explicit.items() if v is None]
        raise ValueError(f"initialize_distributed: give all of coordinator_address, num_processes "
                         f"and process_id (or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, "
                         f"{ENV_PROCESS_ID}) or none of them; missing {missing}")
    if jax.distributed.is_initialized():
        return jax.process_index(), jax.process_count()
    if given:
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f"initialize_distributed: need 0 <= process_id < num_processes, got "
                             f"process_id={process_id}, num_processes={num_processes}")
        if num_processes > 1:
            jax.distributed.initialize(coordinator_address=coordinator_address,
                                       num_processes=num_processes, process_id=process_id,
                                       local_device_ids=local_device_ids)
    elif _cluster_detected(environ):
        jax.distributed.initialize(local_device_ids=local_device_ids)
    return jax.process_index(), jax.process_count()
