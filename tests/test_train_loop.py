"""End to end: a 2-value sweep over N (loss falls, JSON / table / plots written) and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sleepjax.sweep import format_table, run_sweep, sweep_points

from conftest_training import REPO, RULE110, TINY_OVERRIDES, enable_compilation_cache, tiny_config

STEPS = 12


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("jax_cache"))
    undo = enable_compilation_cache(directory)
    yield directory
    undo()


def test_sweep_end_to_end_and_cli(cache_dir, tmp_path):
    """One test (two compilations, shared with the CLI subprocess through the cache)."""
    workdir = str(tmp_path / "sweep")
    cfg = tiny_config(train__steps=STEPS, train__checkpoint_every=6, train__eval_every=6)
    result = run_sweep(cfg, workdir, sweep_points(None, ["1", "2"]))

    assert [r["passes"] for r in result["rows"]] == [1, 2]
    for name in ("accuracy_vs_passes.json", "accuracy_vs_passes.md", "accuracy_vs_passes.png",
                 "accuracy_vs_tokens.png",
                 "accuracy_vs_difficulty.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    with open(os.path.join(workdir, "accuracy_vs_passes.json")) as f:
        saved = json.load(f)
    assert [r["passes"] for r in saved["rows"]] == [1, 2]
    for row in saved["rows"]:
        assert 0.0 <= row["accuracy"]["all"] <= 1.0 and row["tokens_seen"] == STEPS * 8 * 18
        with open(os.path.join(workdir, row["run"], "eval.json")) as f:
            assert [h["step"] for h in json.load(f)["history"]] == [6, STEPS]
        # The loss falls on this tiny run.
        with open(os.path.join(workdir, row["run"], "train_log.jsonl")) as f:
            losses = [json.loads(line)["loss"] for line in f]
        assert len(losses) == STEPS
        assert np.mean(losses[-4:]) < 0.85 * losses[0], (row["passes"], losses)
    lines = result["table"].splitlines()
    assert lines[0].startswith("| N | acc t=1 | acc all") and len(lines) == 4
    # Rerunning a finished sweep resumes every run at its last step: nothing trains again.
    again = run_sweep(cfg, workdir, sweep_points(None, ["1", "2"]))
    assert [(r["accuracy"], r["final_train_loss"]) for r in again["rows"]] == \
        [(r["accuracy"], r["final_train_loss"]) for r in result["rows"]]

    # The CLI with --config.sleep.passes=2 and the same settings reproduces the N = 2 run.
    cli_dir = str(tmp_path / "cli")
    proc = _cli([f"--workdir={cli_dir}", "--config.sleep.passes=2",
                 *_tiny_flags(**{"train.steps": STEPS, "train.checkpoint_every": 6,
                                 "train.eval_every": 6})], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["step"] == STEPS
    with open(os.path.join(cli_dir, "config.json")) as f:
        assert json.load(f)["sleep"]["passes"] == 2
    assert summary["accuracy"] == result["rows"][1]["accuracy"]


def test_sweep_points_and_table_format():
    assert sweep_points(f"{RULE110}:tiny", None) == [{"sleep.passes": n} for n in (1, 2, 3, 4)]
    assert sweep_points(RULE110, ["2", "3"]) == [{"sleep.passes": 2}, {"sleep.passes": 3}]
    with pytest.raises(ValueError, match="--passes"):
        sweep_points(RULE110, ["0"])
    table = format_table([{"passes": 1, "accuracy": {"4": 0.5, "16": 0.25, "all": 0.375},
                           "eval_loss": 0.7, "final_train_loss": 0.6, "tokens_seen": 1000,
                           "wall_time_s": 3.2}], "k")
    assert table.splitlines()[0].startswith("| N | acc k=4 | acc k=16 | acc all")
    assert "| 1 | 0.500 | 0.250 | 0.375 |" in table


def _cli(args, cache_dir=None, timeout=600):
    command = [sys.executable, "-m", "sleepjax.train", f"--config={RULE110}:tiny", *args]
    if cache_dir:
        command.append(f"--compilation_cache_dir={cache_dir}")
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _tiny_flags(**extra):
    values = {**TINY_OVERRIDES, **extra}
    flags = [f"--config.task.{k}={v}" for k, v in
             (("t", 1), ("cells", 8), ("num_states", 2), ("num_test", 64))]
    flags += [f"--config.{k}={v}" for k, v in values.items()]
    return flags


def test_cli_rejects_unknown_key_and_bad_values(tmp_path):
    proc = _cli([f"--workdir={tmp_path}", "--config.sleep.window=500"])
    assert proc.returncode == 1 and "sleep.window" in proc.stderr
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


@pytest.mark.parametrize("module", ["sleepjax.train", "sleepjax.sweep"])
def test_cli_config_errors_are_one_line_naming_the_key_or_path(module, tmp_path):
    missing = str(tmp_path / "missing.py")
    for args, named in (([f"--config={missing}:tiny"], f"cannot read config file {missing!r}"),
                        ([f"--config={RULE110}:tiny", "--config.sleep.pases=2"],
                         "--config.sleep.pases: unknown config key"),
                        ([f"--config={RULE110}:huge"], "config variant: must be one of")):
        proc = subprocess.run([sys.executable, "-m", module, *args, f"--workdir={tmp_path}/w"],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
        assert lines[0].startswith("error: ") and named in lines[0], lines
    assert not os.path.exists(tmp_path / "w")
