"""Host-side plumbing of a multi-host job: joining it, and host batches -> global arrays.

Every process runs the same program on its local devices. Each host's data loader reads its
own slice of the global batch (:func:`host_shard_info`), and :func:`make_global_batch`
assembles those slices into one ``jax.Array`` split over the batch axes (data, fsdp).
Nothing here touches JAX state at import; :func:`initialize_distributed` must run before any
other JAX call in a multi-process job.
"""

from __future__ import annotations

import os
from typing import Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding

from sleepjax.parallel.logical_axes import batch_spec, mesh_axis_size, path_to_str


def batch_sharding(mesh) -> NamedSharding:
    """NamedSharding for every array of a training/eval batch ([B, ...], B over data*fsdp)."""
    return NamedSharding(mesh, batch_spec(mesh))


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
# How long a process may go without a heartbeat before the job's other processes end with an
# error (instead of waiting forever in a collective with a dead peer); JAX's default is 100 s.
ENV_HEARTBEAT_TIMEOUT = "SLEEPJAX_HEARTBEAT_TIMEOUT_S"


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

    ``$SLEEPJAX_HEARTBEAT_TIMEOUT_S`` (seconds, default JAX's 100) bounds how long the others
    run on after a process died: then they exit with an error naming the missing heartbeats.

    Call it on every process before any other JAX call that touches devices.
    """
    environ = os.environ if environ is None else environ
    heartbeat = _int_env(environ, ENV_HEARTBEAT_TIMEOUT)
    if heartbeat is not None and heartbeat < 1:
        raise ValueError(f"initialize_distributed: {ENV_HEARTBEAT_TIMEOUT} must be >= 1 second, "
                         f"got {heartbeat}")
    timeouts = {} if heartbeat is None else {"heartbeat_timeout_seconds": heartbeat}
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
                                       local_device_ids=local_device_ids, **timeouts)
    elif _cluster_detected(environ):
        jax.distributed.initialize(local_device_ids=local_device_ids, **timeouts)
    return jax.process_index(), jax.process_count()
