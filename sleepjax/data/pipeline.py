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
                 drop_remainder: bool = True) -> grain.MapDataset:
    """A grain pipeline of batches (dicts of numpy arrays [batch_size, T]) over ``source``.

    Order of operations: global shuffle of each epoch (reseeded per epoch) -> repeat
    ``num_epochs`` times (None = forever) -> take every ``shard_count``-th record starting at
    ``shard_index`` (per-host sharding: pass ``jax.process_index()`` / ``jax.process_count()``) ->
    batch. Because the shard is taken after the global shuffle, the hosts together see exactly one
    global shuffled stream, split disjointly. ``iter(dataset)`` yields batches and supports
    ``get_state()`` / ``set_state()`` for exact resumption from a checkpoint.
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
    return dataset.batch(int(batch_size), drop_remainder=drop_remainder)
