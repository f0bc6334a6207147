"""Data parallelism by hand (``shard_map`` over ``data``) and the partitioned training step.

Why by hand: under compiler (GSPMD) partitioning the gradient of a weight used inside the
window / sleep ``scan`` is a partial sum per iteration, and XLA:CPU (and any backend without
while-loop all-reduce code motion) all-reduces it on every iteration (measured 8.1 of 9.1 MiB
per step inside loops on an 8x1 mesh; benchmarks/RESULTS.md). Under :func:`data_parallel`
local gradients accumulate through the whole backward and are all-reduced once.
"""

from __future__ import annotations

from typing import Callable

import jax
from jax.sharding import PartitionSpec as P

from sleepjax.parallel.activations import active_mesh
from sleepjax.parallel.logical_axes import LOGICAL_AXIS_RULES, manual_axes, replicated
from sleepjax.parallel.multihost import batch_sharding

# The mesh axis over which ``data_parallel`` computes per-shard gradients by hand. ``fsdp``
# also splits the batch but shards the parameters too, so it stays with the compiler.
GRADIENT_SYNC_AXIS = "data"


def batch_psum(tree):
    """Sum ``tree`` over the batch axes that are manual here (inside ``data_parallel``).

    Outside a ``shard_map`` over them (one device, or compiler-partitioned code) the batch is
    whole and this is the identity, so the same loss code serves both.
    """
    mesh = active_mesh()
    axes = () if mesh is None else tuple(
        a for a in LOGICAL_AXIS_RULES["batch"] if a in manual_axes(mesh) and mesh.shape[a] > 1)
    return jax.lax.psum(tree, axes) if axes else tree


def data_parallel(per_shard: Callable, mesh=None) -> Callable:
    """``per_shard(params, batch) -> outputs`` run on each data shard under ``jax.shard_map``.

    The batch is split over ``GRADIENT_SYNC_AXIS`` by hand (the other mesh axes stay with the
    compiler); ``per_shard`` must reduce its outputs with :func:`batch_psum`, so they come
    back replicated.

    Without an active multi-device ``data`` axis (``mesh`` default: ``jax.set_mesh``'s) this
    returns ``per_shard`` itself; so it does with ``fsdp > 1``, where the compiler keeps the
    gradient sync: a shard_map manual over ``data`` whose body still has FSDP-sharded weights
    aborts XLA's SPMD partitioner (jax 0.10.2, CPU: "Check failed: partition_group_list...").
    """

    def run(params, batch):
        active = active_mesh(mesh)
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


def jit_train_step(train_step: Callable, state_shardings, mesh, *, donate: bool = True,
                   per_step_passes: bool = False) -> Callable:
    """``jax.jit`` of ``train_step(state, batch[, passes]) -> (state, metrics)`` over ``mesh``.

    The state keeps ``state_shardings``, the batch is split over (data, fsdp), ``passes`` (the
    step's number of sleep passes, an int32 scalar, with ``per_step_passes``) is replicated,
    metrics come back replicated. The call runs under ``jax.set_mesh(mesh)`` so that ops which
    must be wrapped in ``shard_map`` (the Pallas kernels) and ``constrain`` see the mesh while
    tracing.
    """
    in_shardings = (state_shardings, batch_sharding(mesh))
    if per_step_passes:
        in_shardings += (replicated(mesh),)
    jitted = jax.jit(train_step, in_shardings=in_shardings,
                     out_shardings=(state_shardings, replicated(mesh)),
                     donate_argnums=(0,) if donate else ())

    def step(state, batch, *passes):
        with jax.set_mesh(mesh):
            return jitted(state, batch, *passes)

    step.jitted = jitted      # for .lower(...) / HLO inspection
    step.mesh = mesh
    return step
