"""Task sources and grain input pipelines (shuffle, repeat, per-host shard, batch)."""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from sleepjax.data import configs
from sleepjax.data.source import ProceduralSource


def make_source(task_cfg: Any, split: str, seed: int) -> ProceduralSource:
    """The random-access source of ``split`` ('train' or 'test') for a task config.

    Record ``i`` is a pure function of ``(task_cfg, seed, split, i)``; see
    :mod:`sleepjax.data.source` for the record contract and the train/test partition.
    """
    cfg = configs.validate_task_config(task_cfg)
    return configs.TASKS[cfg["name"]].SOURCE(cfg, split, seed)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: must be an int >= {minimum} (got {value!r})")


def make_dataset(source, *, batch_size: int, seed: int, shuffle: bool = True,
                 num_epochs: int | None = None, shard_index: int = 0, shard_count: int = 1,
                 drop_remainder: bool = True, prefetch_batches: int = 2, read_threads: int = 1,
                 worker_count: int = 0) -> grain.IterDataset:
    """A grain pipeline of batches (dicts of numpy arrays [batch_size, T]) over ``source``.

    Order of operations: global shuffle of each epoch (reseeded per epoch) -> repeat
    ``num_epochs`` times (None = forever) -> take every ``shard_count``-th record starting at
    ``shard_index`` (per-host sharding: pass ``jax.process_index()`` / ``jax.process_count()``) ->
    batch. Because the shard is taken after the global shuffle, the hosts together see exactly one
    global shuffled stream, split disjointly. ``iter(dataset)`` yields batches and supports
    ``get_state()`` / ``set_state()`` for exact resumption from a checkpoint.

    Batches are generated ahead by ``read_threads`` background threads into a buffer of
    ``prefetch_batches`` batches (grain's defaults, 16 threads and 500 elements, would hold
    hundreds of batches in memory); that overlaps generation with a device step, which releases
    the GIL. For generation on several cores pass ``worker_count`` > 0 (grain worker processes;
    they need parsed absl flags, i.e. a program run by ``absl.app.run``).
    """
    if not hasattr(source, "__len__") or not hasattr(source, "__getitem__"):
        raise ValueError(f"source: must be a random-access data source with __len__ and "
                         f"__getitem__ (got {type(source).__name__})")
    _check_int("batch_size", batch_size, 1)
    _check_int("seed", seed, 0)
    _check_int("shard_count", shard_count, 1)
    _check_int("shard_index", shard_index, 0)
    if shard_index >= shard_count:
        raise ValueError(f"shard_index: must be < shard_count={shard_count} (got {shard_index})")
    if num_epochs is not None:
        _check_int("num_epochs", num_epochs, 1)
    _check_int("prefetch_batches", prefetch_batches, 1)
    _check_int("read_threads", read_threads, 0)
    _check_int("worker_count", worker_count, 0)
    for name, flag in (("shuffle", shuffle), ("drop_remainder", drop_remainder)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name}: must be a bool (got {flag!r})")
    if len(source) < shard_count:
        raise ValueError(f"shard_count: {shard_count} shards of a source of only {len(source)} "
                         f"records would leave some shard empty")
    if num_epochs is not None and drop_remainder:
        per_shard = (len(source) * num_epochs) // shard_count
        if per_shard < batch_size:
            raise ValueError(f"batch_size: {batch_size} is larger than the {per_shard} records "
                             f"each shard gets in {num_epochs} epoch(s); with drop_remainder=True "
                             f"there would be no batch at all")

    dataset = grain.MapDataset.source(source)
    if shuffle:
        dataset = dataset.shuffle(seed=int(seed))
    dataset = dataset.repeat(num_epochs)
    if shard_count > 1:
        dataset = dataset[int(shard_index)::int(shard_count)]
    dataset = dataset.batch(int(batch_size), drop_remainder=drop_remainder)
    batches = dataset.to_iter_dataset(grain.ReadOptions(
        num_threads=int(read_threads), prefetch_buffer_size=int(prefetch_batches)))
    if worker_count:
        from absl import flags   # grain's worker processes read absl flags

        if not flags.FLAGS.is_parsed():
            raise ValueError("worker_count: grain worker processes need parsed absl flags; run "
                             "under absl.app.run(main) or call absl.flags.FLAGS.mark_as_parsed() "
                             f"first (got worker_count={worker_count})")
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(worker_count)))
    return batches
