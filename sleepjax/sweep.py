"""The ablation over the number of sleep passes N, over seeds: train, evaluate, tabulate, plot.

    python -m sleepjax.sweep --config=experiments/rule110.py:tiny --workdir=runs/sweep

trains every point ``(N, seed)`` -- N from the config file's ``get_sweep()`` (or ``--passes``),
seeds from its ``get_seeds()`` (or ``--seeds``; else ``train.seed``) -- in
``<workdir>/passes<N>_seed<s>``, evaluates each trained model also with other numbers of sleep
passes N' (``--eval_passes``; default: every N of the sweep and twice the largest), then writes

* ``accuracy_vs_passes.{json,md}``: per N the mean +- std over seeds of the exact-match
  accuracy (overall and per difficulty) and of the answer loss, every seed's value, the wall
  time, and the task's chance / always-majority baselines (from the test split); the
  train-N x eval-N' table;
* ``accuracy_vs_tokens.png`` (mean over seeds with a min-max band; baselines drawn),
  ``accuracy_vs_passes.png``, ``accuracy_vs_difficulty.png``, ``loss_vs_tokens.png`` (one panel
  per difficulty: the paper's Fig. 3 is Depo's test loss per k) and ``cross_eval.png``.

``--lr_grid=1e-3,2e-3,4e-3,1e-2`` runs the paper's learning-rate protocol instead: N = 1 only,
one point per Muon rate (AdamW's scaled with it) and seed, the choice written to
``lr_grid.{json,md}`` (:mod:`sleepjax.training.lr_grid`).

A finished point leaves ``point.json`` in its directory and is never trained again on a rerun
(its stored results are used); an interrupted one resumes from its own checkpoints. In a
multi-host job every process runs the sweep; only the primary one writes the sweep's files.
"""

from __future__ import annotations

import json
import time
from typing import Mapping, Sequence

from absl import app, flags
from ml_collections import config_flags

from sleepjax import data
from sleepjax.training import cli, lr_grid, paths, plots, stats
from sleepjax.training.baselines import task_baselines
from sleepjax.training.checkpointing import load_params
from sleepjax.training.config import flat_defaults, validate_config
from sleepjax.training.config_io import flatten_config, same_config
from sleepjax.training.cross_eval import evaluate_adaptive, evaluate_at_passes
from sleepjax.training.experiment_files import apply_overrides, load_config_module
from sleepjax.training import logging as run_logging
from sleepjax.training.trainer import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file with variant, e.g. experiments/rule110.py:tiny",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep output directory (one sub-workdir per point).")
_PASSES = flags.DEFINE_list("passes", None, "Override the sweep: comma-separated N values.")
_SEEDS = flags.DEFINE_list("seeds", None, "Comma-separated seeds (train.seed: init and data "
                           "order); default: the config file's get_seeds(), else train.seed.")
_SWEEP = flags.DEFINE_string(
    "sweep", None, "A named sweep of the config file: get_sweep(NAME) (e.g. 'recipes', the "
    "stable-training recipes); default: get_sweep().")
_SETTINGS = flags.DEFINE_list(
    "settings", None, "Run only these settings of the sweep, by their 0-based index in it and "
    "in this order (e.g. 0,3,6 of --sweep=recipes); a later full run reuses their points.")
_EVAL_ADAPTIVE = flags.DEFINE_list(
    "eval_adaptive_tols", None, "Also evaluate every model with adaptive sleep "
    "(sleep.adaptive_tol) at each of these tolerances, capped at --adaptive_cap passes; reports "
    "accuracy against the mean passes used.")
_ADAPTIVE_CAP = flags.DEFINE_integer("adaptive_cap", None, "Most passes adaptive sleep may use "
                                     "(default: the largest --eval_passes, else sleep.passes).")
_EVAL_PASSES = flags.DEFINE_list(
    "eval_passes", None, "N' values every trained model is also evaluated with; default: every "
    "N of the sweep and twice the largest; 'none' disables.")

_LR_GRID = flags.DEFINE_list(
    "lr_grid", None, "Muon learning rates of the paper's N = 1 learning-rate grid (replaces "
    "--passes; AdamW's rate scaled with each); writes lr_grid.{json,md} with the chosen rate.")
_LR_CRITERION = flags.DEFINE_enum("lr_criterion", "accuracy", lr_grid.CRITERIA,
                                  "How --lr_grid chooses: highest mean final accuracy, or lowest "
                                  "mean final answer loss.")
_ALLOW_SCHEDULE_CHANGE = flags.DEFINE_bool("allow_schedule_change", False,
                                           cli.ALLOW_SCHEDULE_CHANGE_HELP)
_CACHE = flags.DEFINE_string("compilation_cache_dir", None, cli.COMPILATION_CACHE_HELP)

POINT_FILE = "point.json"


def _config_module(config_path: str | None):
    return load_config_module(config_path.partition(":")[0]) if config_path else None


def sweep_points(config_path: str | None, passes: Sequence[str] | None,
                 name: str | None = None) -> list[dict]:
    """The settings of the sweep: ``--passes`` if given, else the config file's
    ``get_sweep()`` (``get_sweep(name)`` for a named sweep)."""
    if passes:
        if name:
            raise ValueError("--sweep: give either --sweep or --passes")
        return [{"sleep.passes": n} for n in cli.parse_list_flag("passes", passes, int, minimum=1)]
    module = _config_module(config_path)
    if module is None or not hasattr(module, "get_sweep"):
        raise ValueError(f"--config: {config_path} has no get_sweep(); pass --passes")
    return list(module.get_sweep(name) if name else module.get_sweep())


def select_settings(settings: Sequence[Mapping], indices: Sequence[str] | None) -> list:
    """The settings at ``indices`` (``--settings``), in that order; all when none are given."""
    if not indices:
        return list(settings)
    chosen = cli.parse_list_flag("settings", indices, int)
    if max(chosen) >= len(settings):
        raise ValueError(f"--settings: the sweep has {len(settings)} settings (indices 0.."
                         f"{len(settings) - 1}); got {max(chosen)}")
    return [settings[i] for i in chosen]


def sweep_seeds(config_path: str | None, seeds: Sequence[str] | None, cfg) -> list[int]:
    """``--seeds`` if given, else the config file's ``get_seeds()``, else ``[train.seed]``."""
    if seeds:
        return cli.parse_list_flag("seeds", seeds, int)
    module = _config_module(config_path)
    if module is not None and hasattr(module, "get_seeds"):
        return [int(s) for s in module.get_seeds()]
    return [int(cfg.train.seed)]


def default_eval_passes(settings: Sequence[Mapping], cfg) -> list[int]:
    """Every N of the sweep and twice the largest (does a model use passes it never trained with?)."""
    trained = {int(s.get("sleep.passes", cfg.sleep.passes)) for s in settings}
    return sorted(trained | {2 * max(trained)})


def point_name(setting: Mapping, seed: int) -> str:
    """``passes4_backprop_passes1_seed0``: the overrides' last key parts and values (':' in a
    value becomes '-', so the name is a plain path component everywhere)."""
    name = "_".join(f"{k.split('.')[-1]}{v}" for k, v in setting.items()) or "base"
    return f"{name}_seed{seed}".replace(":", "-")


def adaptive_key(tol: float, cap: int) -> str:
    return f"tol{tol:g}_cap{cap}"


def _read_point(run_dir, flat_cfg: Mapping) -> dict | None:
    """The stored result of a finished point, if it was made with this config (a key its
    config lacks counts as equal at its default: options added later keep old behaviour)."""
    path = paths.as_path(run_dir) / POINT_FILE
    if not path.exists():
        return None
    point = paths.read_json(path)
    saved = point.get("config") or {}
    return point if same_config(saved, flat_cfg, flat_defaults(flat_cfg)) else None


def run_point(cfg, run_dir: str, setting: Mapping, seed: int, eval_passes: Sequence[int], *,
              allow_schedule_change: bool = False, adaptive_tols: Sequence[float] = (),
              adaptive_cap: int | None = None) -> dict:
    """Train (or reuse) one point and evaluate it at every N' of ``eval_passes`` and with
    adaptive sleep at every tolerance of ``adaptive_tols`` (at most ``adaptive_cap`` passes)."""
    flat = json.loads(json.dumps(flatten_config(cfg)))   # JSON-normalised, as stored
    point = _read_point(run_dir, flat)
    if point is None:
        result = train_and_evaluate(cfg, run_dir, allow_schedule_change=allow_schedule_change)
        final = result["final_eval"]
        point = {"config": flat, "setting": dict(setting), "seed": seed,
                 "passes": int(cfg.sleep.passes), "final_eval": final,
                 "history": result["history"],
                 "final_train_loss": _final_train_loss(result, run_dir),
                 "wall_time_s": float(result["total_wall_time_s"]),   # across resumes
                 "cross_eval": {}}
        params = result["params"]
    else:
        params = None
    point.setdefault("adaptive_eval", {})
    missing = [n for n in eval_passes if str(n) not in point["cross_eval"]]
    cap = adaptive_cap or int(cfg.sleep.passes)
    missing_tols = [t for t in adaptive_tols if adaptive_key(t, cap) not in point["adaptive_eval"]]
    if (missing or missing_tols) and params is None:
        params = load_params(run_dir).params
    if missing:
        point["cross_eval"].update(evaluate_at_passes(cfg, params, missing))
    for tol in missing_tols:
        point["adaptive_eval"][adaptive_key(tol, cap)] = evaluate_adaptive(cfg, params, tol, cap)
    if run_logging.is_primary_process():
        paths.write_json(paths.as_path(run_dir) / POINT_FILE, point)
    return point


def run_sweep(cfg, workdir: str, settings: Sequence[Mapping], seeds: Sequence[int],
              eval_passes: Sequence[int] = (), *, allow_schedule_change: bool = False,
              adaptive_tols: Sequence[float] = (), adaptive_cap: int | None = None) -> dict:
    """Train every ``(setting, seed)``; write the sweep's tables and plots.

    ``settings`` are dotted-key overrides of ``cfg`` (``{"sleep.passes": N}``); ``seeds`` set
    ``train.seed``; ``allow_schedule_change`` is passed to every ``train_and_evaluate``;
    ``eval_passes`` / ``adaptive_tols`` / ``adaptive_cap`` go to :func:`run_point`.
    Returns ``{"points": [...], "summary": {...}, "table": str}``.
    """
    if not seeds:
        raise ValueError("--seeds: at least one seed is needed")
    workdir = paths.make_directory(paths.run_directory(workdir))
    started = time.perf_counter()
    rc = validate_config(cfg)
    test_source = data.make_source(rc.task, "test", rc.train.seed)
    baselines = task_baselines(test_source, rc.train.eval_examples)
    points = []
    for setting in settings:
        for seed in seeds:
            run_cfg = apply_overrides(cfg, {**setting, "train.seed": int(seed)})
            run_dir = workdir / point_name(setting, seed)
            points.append(run_point(run_cfg, run_dir, setting, int(seed), eval_passes,
                                    allow_schedule_change=allow_schedule_change,
                                    adaptive_tols=adaptive_tols, adaptive_cap=adaptive_cap))
    summary = stats.summarize(points, baselines, test_source.difficulty_name)
    table = stats.format_report(summary)
    if run_logging.is_primary_process():   # the only host that writes the sweep's files
        summary["sweep_wall_time_s"] = time.perf_counter() - started
        _write_sweep_outputs(workdir, points, summary, table)
    return {"points": points, "summary": summary, "table": table}


def _final_train_loss(result: Mapping, run_dir: str) -> float:
    """The run's last training loss: from this invocation, or, when a finished run was rerun
    and trained no step, from its ``train_log.jsonl`` (nan if that is not readable here)."""
    if result["losses"]:
        return result["losses"][-1][1]
    path = paths.as_path(run_dir) / run_logging.RunLogger.TRAIN_LOG_FILE
    if not path.exists():
        return float("nan")
    losses = [json.loads(line)["loss"] for line in path.read_text().splitlines() if line.strip()]
    return losses[-1] if losses else float("nan")


def _write_sweep_outputs(workdir, points, summary, table: str) -> None:
    paths.write_json(workdir / "accuracy_vs_passes.json",
                     {**summary, "points": [{k: v for k, v in p.items() if k != "config"}
                                            for p in points]})
    paths.write_text(workdir / "accuracy_vs_passes.md", table + "\n")
    plots.plot_sweep(summary, workdir)


def main(argv) -> int:
    return cli.run_main(argv, _CONFIG.value, _WORKDIR.value, _CACHE.value, _sweep_and_report)


def _sweep_and_report() -> int:
    started = time.perf_counter()
    config_path = config_flags.get_config_filename(flags.FLAGS["config"])
    seeds = sweep_seeds(config_path, _SEEDS.value, _CONFIG.value)
    if _LR_GRID.value:
        if _PASSES.value:
            raise ValueError("--lr_grid: the grid runs N = 1 only; drop --passes")
        return _grid_and_report(seeds, started)
    settings = select_settings(sweep_points(config_path, _PASSES.value, _SWEEP.value),
                               _SETTINGS.value)
    if _EVAL_PASSES.value == ["none"]:
        eval_passes = []
    elif _EVAL_PASSES.value:
        eval_passes = cli.parse_list_flag("eval_passes", _EVAL_PASSES.value, int, minimum=1)
    else:
        eval_passes = default_eval_passes(settings, _CONFIG.value)
    tols = (cli.parse_list_flag("eval_adaptive_tols", _EVAL_ADAPTIVE.value, float, strictly=True,
                                noun="tolerance") if _EVAL_ADAPTIVE.value else [])
    cap = _ADAPTIVE_CAP.value or (max(eval_passes) if eval_passes else None)
    if cap is not None and cap < 1:
        raise ValueError(f"--adaptive_cap: must be an int >= 1 (got {cap})")
    result = run_sweep(_CONFIG.value, _WORKDIR.value, settings, seeds, eval_passes,
                       allow_schedule_change=_ALLOW_SCHEDULE_CHANGE.value,
                       adaptive_tols=tols, adaptive_cap=cap)
    print(result["table"])
    if run_logging.is_primary_process():
        print(f"\nwrote {_WORKDIR.value}/accuracy_vs_passes.{{json,md}} and plots; "
              f"this invocation's wall time {time.perf_counter() - started:.0f} s")
    return 0


def run_lr_grid(cfg, workdir: str, muon_lrs: Sequence[float], seeds: Sequence[int],
                criterion: str = "accuracy") -> dict:
    """The N = 1 learning-rate grid as a sweep; writes ``lr_grid.{json,md}``, returns the grid
    (:func:`sleepjax.training.lr_grid.choose` plus its markdown ``table``)."""
    if criterion not in lr_grid.CRITERIA:
        raise ValueError(f"--lr_criterion: must be one of {lr_grid.CRITERIA} (got {criterion!r})")
    result = run_sweep(cfg, workdir, lr_grid.grid_settings(cfg, muon_lrs), seeds, eval_passes=())
    grid = lr_grid.choose(result["summary"], criterion)
    table = lr_grid.format_grid(grid, result["summary"]["baselines"])
    if run_logging.is_primary_process():
        workdir = paths.as_path(workdir)
        paths.write_json(workdir / "lr_grid.json",
                         {**grid, "baselines": result["summary"]["baselines"]})
        paths.write_text(workdir / "lr_grid.md", table + "\n")
    return {**grid, "table": table}


def _grid_and_report(seeds: Sequence[int], started: float) -> int:
    grid = run_lr_grid(_CONFIG.value, _WORKDIR.value, lr_grid.parse_rates(_LR_GRID.value), seeds,
                       _LR_CRITERION.value)
    print(grid["table"])
    if run_logging.is_primary_process():
        chosen = grid["chosen"]
        print(f"\nchosen: --config.optim.muon_lr={chosen['muon_lr']:g} "
              f"--config.optim.adam_lr={chosen['adam_lr']:g}; wrote {_WORKDIR.value}/lr_grid.{{json,md}}; "
              f"this invocation's wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=cli.make_flags_parser())
