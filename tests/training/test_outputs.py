"""What a run writes, on which host of a multi-host job, and loading its trained params back.

One tiny 2-step training run (one compilation, shared through the persistent compilation cache
with the second run) serves every test of this module.
"""

from __future__ import annotations

import json
import re
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sleepjax.training
from sleepjax.models import SleepLM
from sleepjax.sweep import run_sweep
from sleepjax.training import logging as run_logging
from sleepjax.training.checkpointing import Checkpointer, TrainedParams, load_params
from sleepjax.training.trainer import train_and_evaluate

from support.training import enable_compilation_cache, tiny_config

# One worker runs the module (the run its tests read trains once).
pytestmark = pytest.mark.xdist_group("test_outputs")

STEPS = 2
HOST_FILES = {"config.json", "config.txt", "tensorboard", "train_log.jsonl", "eval.json",
              "workdir.lock"}


def _config():
    return tiny_config(train__steps=STEPS, train__checkpoint_every=1)


def _assert_trees_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def _saved_steps(workdir):
    with Checkpointer(os.path.join(workdir, "checkpoints"), keep=2, async_save=False) as ck:
        return ck.all_steps()


@pytest.fixture(scope="module")
def primary_run(tmp_path_factory):
    """A finished run as the primary process writes it: ``(workdir, result)``."""
    undo = enable_compilation_cache(str(tmp_path_factory.mktemp("jax_cache")))
    workdir = str(tmp_path_factory.mktemp("primary") / "run")
    try:
        yield workdir, train_and_evaluate(_config(), workdir)
    finally:
        undo()


def test_is_primary_process_follows_jax_process_index(monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda *a, **k: 0)
    assert run_logging.is_primary_process()
    monkeypatch.setattr(jax, "process_index", lambda *a, **k: 1)
    assert not run_logging.is_primary_process()


def test_primary_process_writes_logs_eval_config_and_checkpoints(primary_run):
    workdir, result = primary_run
    assert set(os.listdir(workdir)) == HOST_FILES | {"checkpoints"}
    assert any(n.startswith("events") for n in os.listdir(os.path.join(workdir, "tensorboard")))
    with open(os.path.join(workdir, "train_log.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == list(range(1, STEPS + 1))
    with open(os.path.join(workdir, "eval.json")) as f:
        assert json.load(f)["history"] == result["history"]
    assert _saved_steps(workdir) == [1, STEPS]


def test_non_primary_process_writes_only_checkpoints(primary_run, tmp_path, monkeypatch):
    """Process 1 of a multi-host job: trains, evaluates and checkpoints like process 0, but
    writes no log, TensorBoard, eval, config or plot file (and the sweep writes none either)."""
    primary_dir, primary_result = primary_run
    # Patch the one decision point. (Patching jax.process_index itself would also make orbax and
    # the data sharding think this single process is the second of a job that does not exist.)
    monkeypatch.setattr(run_logging, "is_primary_process", lambda: False)

    workdir = str(tmp_path / "run")
    result = train_and_evaluate(_config(), workdir)
    assert os.listdir(workdir) == ["checkpoints"]
    assert _saved_steps(workdir) == [1, STEPS]
    # Evaluation still ran here (it is a collective in a real job); only its writing is gated.
    assert result["final_eval"] == primary_result["final_eval"]
    _assert_trees_equal(result["params"], primary_result["params"])
    assert load_params(workdir).step == STEPS          # its checkpoints are complete

    # The sweep over a finished run (resumes, trains nothing): no table / JSON / plots here...
    sweep_dir = tmp_path / "sweep"
    seed = _config().train.seed
    shutil.copytree(primary_dir, sweep_dir / f"passes1_seed{seed}")
    points = run_sweep(_config(), str(sweep_dir), [{"sleep.passes": 1}], [seed])["points"]
    assert points[0]["final_eval"]["accuracy"] == primary_result["final_eval"]["accuracy"]
    # Its wall time is the run's, saved with its last checkpoint; not the rerun's few seconds.
    assert points[0]["wall_time_s"] == pytest.approx(primary_result["total_wall_time_s"], rel=0.2)
    assert os.listdir(sweep_dir) == [f"passes1_seed{seed}"]
    assert "point.json" not in os.listdir(sweep_dir / f"passes1_seed{seed}")
    # ... and all of them on the primary process.
    monkeypatch.setattr(run_logging, "is_primary_process", lambda: True)
    run_sweep(_config(), str(sweep_dir), [{"sleep.passes": 1}], [seed])
    assert {"accuracy_vs_passes.json", "accuracy_vs_passes.md", "accuracy_vs_passes.png",
            "accuracy_vs_tokens.png", "accuracy_vs_difficulty.png"} < set(os.listdir(sweep_dir))


def test_load_params_restores_the_trained_params_and_config(primary_run):
    workdir, result = primary_run
    loaded = load_params(workdir)
    assert isinstance(loaded, TrainedParams) and loaded.step == STEPS
    _assert_trees_equal(loaded.params, result["params"])
    device = jax.local_devices()[0]
    assert all(leaf.sharding.device_set == {device} for leaf in jax.tree.leaves(loaded.params))
    assert loaded.config.sleep.window == 8 and loaded.config.train.steps == STEPS
    assert loaded.model.d_model == 32 and loaded.model.vocab_size == 3 and loaded.sleep.passes == 1

    # The model runs with them and gives the trained model's output (one compilation).
    tokens = jnp.zeros((2, 18), jnp.int32)
    apply = jax.jit(SleepLM(loaded.model, loaded.sleep).apply)
    logits = apply({"params": loaded.params}, tokens)
    assert logits.shape == (2, 18, 3) and bool(jnp.all(jnp.isfinite(logits)))
    np.testing.assert_array_equal(logits, apply({"params": result["params"]}, tokens))

    # An earlier step, onto a given sharding; the package-level name is the same function.
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    first = sleepjax.training.load_params(workdir, 1, sharding=replicated)
    assert first.step == 1
    assert all(leaf.sharding == replicated for leaf in jax.tree.leaves(first.params))
    assert not all(np.array_equal(a, b) for a, b in
                   zip(jax.tree.leaves(first.params), jax.tree.leaves(loaded.params)))


def test_load_params_errors_name_the_workdir(primary_run, tmp_path):
    workdir, _ = primary_run
    with pytest.raises(ValueError, match=r"step=7 has no checkpoint in .*run.*saved steps: \[1, 2\]"):
        load_params(workdir, 7)
    for bad_step in (-1, 1.0, True, "2"):
        with pytest.raises(ValueError, match="step must be a non-negative int"):
            load_params(workdir, bad_step)
    missing = tmp_path / "missing"      # a Path works as well as a str
    with pytest.raises(FileNotFoundError, match="missing.*does not exist"):
        load_params(missing)
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    for no_checkpoint in (tmp_path, empty):
        with pytest.raises(FileNotFoundError, match=re.escape(str(no_checkpoint)) + ".*holds no checkpoint"):
            load_params(str(no_checkpoint))
    with pytest.raises(ValueError, match="sharding must be"):
        load_params(workdir, sharding={"not": "the params tree"})
