"""grain pipeline (batching, sharding, checkpointable iterator) and task-config validation."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import sleepjax.data as data


def small_source(num_train=1000, split="train"):
    return data.make_source(data.task_config("rule110", t=2, num_train=num_train), split, seed=0)


def batch_rows(batch):
    return [tuple(row) for row in batch["inputs"].tolist()]


def test_batches_are_stacked_records_in_source_order_without_shuffle():
    source = small_source()
    it = iter(data.make_dataset(source, batch_size=4, seed=0, shuffle=False))
    for b in range(2):
        batch = next(it)
        assert set(batch) == {"inputs", "targets", "loss_mask", "answer_id", "difficulty"}
        for key, value in batch.items():
            assert value.shape == (4, source.seq_len)
            np.testing.assert_array_equal(value, np.stack([source[4 * b + r][key] for r in range(4)]))


def test_shuffled_epochs_cover_the_source_and_reshuffle():
    source = small_source(num_train=12)
    ds = data.make_dataset(source, batch_size=4, seed=5, num_epochs=2)
    batches = list(ds)
    assert len(batches) == 6
    all_rows = [batch_rows(b) for b in batches]
    epoch1 = sum(all_rows[:3], [])
    epoch2 = sum(all_rows[3:], [])
    expected = sorted(tuple(source[i]["inputs"].tolist()) for i in range(12))
    assert sorted(epoch1) == expected and sorted(epoch2) == expected
    assert epoch1 != epoch2      # each epoch is reshuffled
    assert epoch1 != [tuple(source[i]["inputs"].tolist()) for i in range(12)]
    # The same seed gives the same order; another seed another.
    again = [batch_rows(b) for b in data.make_dataset(source, batch_size=4, seed=5, num_epochs=2)]
    assert again == all_rows
    other = [batch_rows(b) for b in data.make_dataset(source, batch_size=4, seed=6, num_epochs=2)]
    assert other != all_rows


def test_drop_remainder():
    source = small_source(num_train=10)
    assert len(list(data.make_dataset(source, batch_size=4, seed=0, num_epochs=1))) == 2
    last = list(data.make_dataset(source, batch_size=4, seed=0, num_epochs=1,
                                  drop_remainder=False))[-1]
    assert last["inputs"].shape == (2, source.seq_len)


def test_shards_split_one_global_stream_disjointly():
    source = small_source(num_train=24)
    full = sum((batch_rows(b) for b in data.make_dataset(source, batch_size=2, seed=3,
                                                         num_epochs=1)), [])
    shards = [sum((batch_rows(b) for b in data.make_dataset(
        source, batch_size=2, seed=3, num_epochs=1, shard_index=k, shard_count=3)), [])
        for k in range(3)]
    assert [len(s) for s in shards] == [8, 8, 8]
    for k in range(3):
        assert shards[k] == full[k::3]
    assert len(set(sum(shards, []))) == 24


def test_iterator_state_round_trip_resumes_exactly():
    source = small_source()
    ds = data.make_dataset(source, batch_size=3, seed=1, shard_index=1, shard_count=2)
    it = iter(ds)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(2)]
    resumed = iter(ds)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.slow
def test_worker_processes_give_the_same_batches_and_resume():
    # In a subprocess: grain workers need absl flags marked parsed, a process-global setting.
    script = textwrap.dedent("""
        import numpy as np
        from absl import flags
        import sleepjax.data as data
        if __name__ == "__main__":
            cfg = data.task_config("rule110", t=2, num_train=1000)
            source = data.make_source(cfg, "train", seed=0)
            try:
                data.make_dataset(source, batch_size=4, seed=1, worker_count=1)
                raise SystemExit("expected a ValueError about absl flags")
            except ValueError as error:
                assert "worker_count" in str(error)
            flags.FLAGS.mark_as_parsed()
            reference = iter(data.make_dataset(source, batch_size=4, seed=1))
            expected = [next(reference)["inputs"] for _ in range(5)]
            dataset = data.make_dataset(source, batch_size=4, seed=1, worker_count=1)
            it = iter(dataset)
            first = [next(it)["inputs"] for _ in range(3)]
            state = it.get_state()
            it.close()
            resumed = iter(dataset)
            resumed.set_state(state)
            rest = [next(resumed)["inputs"] for _ in range(2)]
            resumed.close()
            assert all(np.array_equal(a, b) for a, b in zip(first + rest, expected))
            print("WORKERS-OK", flush=True)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=240)
    assert "WORKERS-OK" in result.stdout, result.stdout + result.stderr[-3000:]


@pytest.mark.parametrize("kwargs,key", [
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=2.0), "batch_size"),
    (dict(seed=-1), "seed"),
    (dict(shard_index=2, shard_count=2), "shard_index"),
    (dict(shard_count=0), "shard_count"),
    (dict(num_epochs=0), "num_epochs"),
    (dict(shuffle="yes"), "shuffle"),
    (dict(batch_size=64, num_epochs=1), "batch_size"),
    (dict(prefetch_batches=0), "prefetch_batches"),
    (dict(worker_count=-1), "worker_count"),
])
def test_make_dataset_rejects_bad_arguments(kwargs, key):
    args = dict(batch_size=2, seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=key):
        data.make_dataset(small_source(num_train=20), **args)


def test_make_source_rejects_bad_split_and_seed():
    cfg = data.task_config("rule110")
    with pytest.raises(ValueError, match="split"):
        data.make_source(cfg, "validation", 0)
    with pytest.raises(ValueError, match="seed"):
        data.make_source(cfg, "train", -3)
    with pytest.raises(ValueError, match=r"task\.name: DepoSource makes 'depo'"):
        data.depo.DepoSource(cfg, "train", 0)


def test_task_config_defaults_and_window():
    cfg = data.task_config("rule110")
    assert cfg.name == "rule110" and cfg.t == 32 and cfg.cells == 24 and cfg.query_token
    assert data.default_window(cfg) == 24 and data.seq_len(cfg) == 100
    assert data.task_config("rule110", t=8).t == 8


@pytest.mark.parametrize("name,overrides,message", [
    ("rule110", dict(tt=3), r"task\.tt: unknown key"),
    ("rule110", dict(t="4"), r"task\.t: must be an int"),
    ("rule110", dict(t=4.0), r"task\.t: must be an int"),
    ("rule110", dict(t=-1), r"task\.t: must be >= 0"),
    ("rule110", dict(periodic=1), r"task\.periodic: must be a bool"),
    ("rule110", dict(cells=2), r"task\.cells"),
    ("rule110", dict(num_train=0), r"task\.num_train"),
    ("rule111", dict(), r"task\.name: must be one of"),
])
def test_bad_task_configs_name_the_key(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        data.task_config(name, **overrides)


def test_validate_catches_edits_made_after_construction():
    cfg = data.task_config("rule110")
    cfg.t = -5
    with pytest.raises(ValueError, match=r"task\.t"):
        data.make_source(cfg, "train", 0)
    with pytest.raises(ValueError, match=r"task\.name: missing"):
        data.validate_task_config({"t": 3})
