"""The ablation over the number of sleep passes N: train each N, evaluate, tabulate, plot.

    python -m sleepjax.sweep --config=experiments/rule110.py:tiny --workdir=runs/sweep

trains every N of the config file's ``get_sweep()`` (or ``--passes=1,2``) in
``<workdir>/N<n>``, then writes ``accuracy_vs_passes.json``, ``accuracy_vs_passes.md`` (the
table, also printed), ``accuracy_vs_passes.png``, ``accuracy_vs_tokens.png`` and
``accuracy_vs_difficulty.png``. Each run
resumes from its own checkpoints, so an interrupted sweep continues where it stopped.
In a multi-host job every process runs the sweep; only the primary one writes these files.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Mapping, Sequence

from absl import app, flags
from ml_collections import config_flags

from sleepjax.parallel import multihost as partitioning
from sleepjax.training import plots
from sleepjax.training.checkpointing import ConfigMismatchError
from sleepjax.training.config import apply_overrides, load_config_module
from sleepjax.training.evaluate import write_json
from sleepjax.training import logging as run_logging
from sleepjax.training.trainer import NonFiniteError, train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file with variant, e.g. experiments/rule110.py:tiny",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep output directory (one sub-workdir per N).")
_PASSES = flags.DEFINE_list("passes", None, "Override the sweep: comma-separated N values.")


def sweep_points(config_path: str | None, passes: Sequence[str] | None) -> list[dict]:
    """The runs of the sweep: ``--passes`` if given, else the config file's ``get_sweep()``."""
    if passes:
        values = []
        for text in passes:
            try:
                value = int(text)
            except ValueError:
                raise ValueError(f"--passes: expected comma-separated ints (got {text!r})") from None
            if value < 1:
                raise ValueError(f"--passes: every N must be >= 1 (got {value})")
            values.append(value)
        return [{"sleep.passes": n} for n in values]
    config_path = config_path.partition(":")[0]        # drop a ":variant" suffix
    module = load_config_module(config_path)
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"--config: {config_path} has no get_sweep(); pass --passes")
    return list(module.get_sweep())


def format_table(rows: Sequence[Mapping], difficulty_name: str) -> str:
    """Markdown table: one row per N; accuracy per difficulty and overall, loss, wall time."""
    levels = sorted({k for r in rows for k in r["accuracy"] if k != "all"}, key=int)
    header = (["N"] + [f"acc {difficulty_name}={k}" for k in levels]
              + ["acc all", "eval loss", "final train loss", "tokens", "wall time (s)"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = ([str(r["passes"])] + [f"{r['accuracy'].get(k, float('nan')):.3f}" for k in levels]
                 + [f"{r['accuracy']['all']:.3f}", f"{r['eval_loss']:.4f}",
                    f"{r['final_train_loss']:.4f}", f"{r['tokens_seen']:,}",
                    f"{r['wall_time_s']:.0f}"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_sweep(cfg, workdir: str, points: Sequence[Mapping]) -> dict:
    """Train every sweep point (``{"sleep.passes": N, ...}`` overrides of ``cfg``); write outputs.

    Returns ``{"rows": [...], "table": str}``.
    """
    os.makedirs(workdir, exist_ok=True)
    rows, histories, finals = [], {}, {}
    difficulty_name = "difficulty"
    started = time.perf_counter()
    for point in points:
        run_cfg = apply_overrides(cfg, point)
        passes = int(run_cfg.sleep.passes)
        name = "_".join(f"{k.split('.')[-1]}{v}" for k, v in point.items()) or f"passes{passes}"
        run_dir = os.path.join(workdir, name)
        result = train_and_evaluate(run_cfg, run_dir)
        final = result["final_eval"]
        difficulty_name = result["difficulty_name"]
        rows.append({"passes": passes, "run": name, "overrides": dict(point),
                     "accuracy": final["accuracy"], "examples": final["examples"],
                     "eval_loss": final["loss"], "tokens_seen": final["tokens_seen"],
                     "final_train_loss": _final_train_loss(result, run_dir),
                     "wall_time_s": result["wall_time_s"]})
        histories[passes] = result["history"]
        finals[passes] = final["accuracy"]
    table = format_table(rows, difficulty_name)
    if run_logging.is_primary_process():   # the only host that writes the sweep's files
        _write_sweep_outputs(workdir, rows, table, histories, finals, difficulty_name,
                             time.perf_counter() - started)
    return {"rows": rows, "table": table}


def _final_train_loss(result: Mapping, run_dir: str) -> float:
    """The run's last training loss: from this invocation, or, when a finished run was rerun
    and trained no step, from its ``train_log.jsonl`` (nan if that is not readable here)."""
    if result["losses"]:
        return result["losses"][-1][1]
    path = os.path.join(run_dir, run_logging.RunLogger.TRAIN_LOG_FILE)
    if not os.path.exists(path):
        return float("nan")
    with open(path) as f:
        losses = [json.loads(line)["loss"] for line in f if line.strip()]
    return losses[-1] if losses else float("nan")


def _write_sweep_outputs(workdir, rows, table, histories, finals, difficulty_name,
                         wall_time_s) -> None:
    write_json(os.path.join(workdir, "accuracy_vs_passes.json"),
               {"difficulty_name": difficulty_name, "rows": rows, "total_wall_time_s": wall_time_s})
    with open(os.path.join(workdir, "accuracy_vs_passes.md"), "w") as f:
        f.write(table + "\n")
    plots.plot_accuracy_vs_passes(finals, os.path.join(workdir, "accuracy_vs_passes.png"),
                                  difficulty_name=difficulty_name)
    plots.plot_accuracy_vs_tokens(histories, os.path.join(workdir, "accuracy_vs_tokens.png"))
    plots.plot_accuracy_vs_difficulty(finals, os.path.join(workdir, "accuracy_vs_difficulty.png"),
                                      difficulty_name=difficulty_name)


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("--config and --workdir are required")
    # Join a multi-host job first (a no-op for one process): see sleepjax.partitioning.
    partitioning.initialize_distributed()
    started = time.perf_counter()
    try:
        points = sweep_points(config_flags.get_config_filename(flags.FLAGS["config"]), _PASSES.value)
        result = run_sweep(_CONFIG.value, _WORKDIR.value, points)
    except (ConfigMismatchError, NonFiniteError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(result["table"])
    if run_logging.is_primary_process():
        print(f"\nwrote {_WORKDIR.value}/accuracy_vs_passes.{{json,md,png}}, "
              f"accuracy_vs_tokens.png, accuracy_vs_difficulty.png; "
              f"total wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
