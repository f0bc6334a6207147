"""End to end: a sweep over N x seeds (loss falls, JSON / table / plots written, finished points
reused, evaluation at other N') and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sleepjax.sweep import (default_eval_passes, run_sweep, select_settings, sweep_points,
                            sweep_seeds)
from sleepjax.training import stats
from sleepjax.training.experiment_files import load_config_module

from support.training import REPO, RULE110, TINY_OVERRIDES, tiny_config

STEPS = 12


@pytest.mark.slow
def test_sweep_end_to_end_and_cli(compilation_cache_dir, tmp_path, monkeypatch):
    """Two N x two seeds, each evaluated at N' in {1, 2} (compilations shared through the cache)."""
    workdir = str(tmp_path / "sweep")
    cfg = tiny_config(train__steps=STEPS, train__checkpoint_every=6, train__eval_every=6)
    result = run_sweep(cfg, workdir, sweep_points(None, ["1", "2"]), seeds=[0, 1],
                       eval_passes=[1, 2])

    assert [(p["passes"], p["seed"]) for p in result["points"]] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for name in ("accuracy_vs_passes.json", "accuracy_vs_passes.md", "accuracy_vs_passes.png",
                 "accuracy_vs_tokens.png", "accuracy_vs_difficulty.png", "loss_vs_tokens.png",
                 "cross_eval.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    with open(os.path.join(workdir, "accuracy_vs_passes.json")) as f:
        saved = json.load(f)
    assert [s["label"] for s in saved["settings"]] == ["N=1", "N=2"]
    for setting in saved["settings"]:
        acc = setting["accuracy"]["all"]
        assert setting["seeds"] == [0, 1] and len(acc["values"]) == 2
        assert acc["mean"] == pytest.approx(np.mean(acc["values"]))
        assert acc["std"] == pytest.approx(np.std(acc["values"], ddof=1))
        assert set(setting["cross_eval"]) == {"1", "2"}
        # Evaluating at the training N reproduces the run's own final evaluation.
        assert setting["cross_eval"][str(setting["passes"])]["values"] == acc["values"]
        assert setting["accuracy_curve"]["all"]["tokens"] == [6 * 8 * 18, STEPS * 8 * 18]
    assert 0 < saved["baselines"]["chance"]["all"] <= saved["baselines"]["majority"]["all"] <= 1
    # Different seeds are different runs (init and data order).
    first = [p for p in result["points"] if p["passes"] == 1]
    assert first[0]["final_train_loss"] != first[1]["final_train_loss"]
    for point in result["points"]:
        run = os.path.join(workdir, f"passes{point['passes']}_seed{point['seed']}")
        with open(os.path.join(run, "eval.json")) as f:
            assert [h["step"] for h in json.load(f)["history"]] == [6, STEPS]
        # The loss falls on this tiny run.
        with open(os.path.join(run, "train_log.jsonl")) as f:
            losses = [json.loads(line)["loss"] for line in f]
        assert len(losses) == STEPS
        assert np.mean(losses[-4:]) < 0.85 * losses[0], (point["passes"], losses)
    table = result["table"]
    assert "| N=1 | 0,1 |" in table and "| always-majority answer |" in table and "N'=2" in table

    # Rerunning a finished sweep trains nothing (and says the same).
    import sleepjax.sweep as sweep_module

    def no_training(*args, **kwargs):
        raise AssertionError("a finished point was trained again")

    monkeypatch.setattr(sweep_module, "train_and_evaluate", no_training)
    again = run_sweep(cfg, workdir, sweep_points(None, ["1", "2"]), seeds=[0, 1],
                      eval_passes=[1, 2])
    assert again["table"] == table

    # The CLI with --config.sleep.passes=2 and the same settings reproduces the N = 2 run.
    cli_dir = str(tmp_path / "cli")
    proc = _cli([f"--workdir={cli_dir}", "--config.sleep.passes=2",
                 *_tiny_flags(**{"train.steps": STEPS, "train.checkpoint_every": 6,
                                 "train.eval_every": 6})], compilation_cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["step"] == STEPS
    with open(os.path.join(cli_dir, "config.json")) as f:
        assert json.load(f)["sleep"]["passes"] == 2
    assert summary["accuracy"] == result["points"][2]["final_eval"]["accuracy"]


def test_sweep_points_seeds_and_report_format():
    assert sweep_points(f"{RULE110}:tiny", None) == [{"sleep.passes": n} for n in (1, 2, 3, 4)]
    assert sweep_points(RULE110, ["2", "3"]) == [{"sleep.passes": 2}, {"sleep.passes": 3}]
    with pytest.raises(ValueError, match="--passes"):
        sweep_points(RULE110, ["0"])
    recipes = sweep_points(RULE110, None, "recipes")
    assert select_settings(recipes, None) == recipes
    assert select_settings(recipes, ["6", "0"]) == [recipes[6], recipes[0]]   # in the given order
    with pytest.raises(ValueError, match=rf"^--settings: the sweep has {len(recipes)} settings"):
        select_settings(recipes, [str(len(recipes))])
    with pytest.raises(ValueError, match="^--settings: values repeat"):
        select_settings(recipes, ["1", "1"])
    cfg = tiny_config()
    assert sweep_seeds(RULE110, ["4", "5"], cfg) == [4, 5]
    assert sweep_seeds(RULE110, None, cfg) == list(load_config_module(RULE110).get_seeds())
    assert sweep_seeds(None, None, cfg) == [cfg.train.seed]
    for bad in (["-1"], ["x"], ["1", "1"]):
        with pytest.raises(ValueError, match="--seeds"):
            sweep_seeds(None, bad, cfg)
    assert default_eval_passes([{"sleep.passes": 1}, {"sleep.passes": 3}], cfg) == [1, 3, 6]

    def point(n, seed, acc, loss):
        final = {"accuracy": {"4": acc, "16": acc / 2, "all": acc}, "loss": loss,
                 "loss_by_difficulty": {"4": loss, "16": 2 * loss, "all": 1.5 * loss},
                 "tokens_seen": 1000}
        return {"setting": {"sleep.passes": n}, "seed": seed, "passes": n, "final_eval": final,
                "history": [{**final, "step": 10}], "final_train_loss": 0.5, "wall_time_s": 3.0,
                "cross_eval": {"1": {"accuracy": {"all": acc / 3}}}}

    baselines = {"chance": {"4": 0.25, "16": 0.25, "all": 0.25},
                 "majority": {"4": 0.3, "16": 0.35, "all": 0.3},
                 "marginal_loss": {"4": 1.3, "16": 1.4, "all": 1.35},
                 "answers": {"4": 5, "16": 5, "all": 10}}
    summary = stats.summarize([point(1, 0, 0.5, 0.7), point(1, 1, 0.7, 0.9), point(2, 0, 0.9, 0.1)],
                              baselines, "k")
    table = stats.format_report(summary)
    assert ("| N=1 | 0,1 | 0.600 ± 0.141 | 0.500 / 0.700 | - | 0.600 ± 0.141 | 0.300 ± 0.071 |"
            in table)
    # N=2 ran seed 0 only: its paired difference is against N=1's seed 0 (0.9 - 0.5).
    assert "| N=2 | 0 | 0.900 | 0.900 | +0.400 ± 0.000 (0.400) |" in table
    assert "Δ acc vs N=1, same seed" in table
    assert "| chance | - | 0.250 | - | - | 0.250 | 0.250 |" in table
    assert "| always-majority answer | - | 0.300 | - | - | 0.300 | 0.350 | 1.350 |" in table
    assert "| N=1 | 0.800 ± 0.141 | 1.600 ± 0.283 |" in table       # loss per k
    assert "| N=1 | 0.200 ± 0.047 |" in table                       # cross-evaluation at N'=1


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
