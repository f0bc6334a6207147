"""Run outputs: config.json / config.txt, train_log.jsonl, eval.json, TensorBoard, progress bar.

In a multi-host JAX job every process runs the same training code on a shared workdir. Only
the primary process (``jax.process_index() == 0``) writes these host-side files: every other
process gets a :class:`RunLogger` whose writes are no-ops, so the training loop itself has no
per-host branches. Checkpoints are *not* written here: orbax coordinates multi-host saves
itself and must be called on every process.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Mapping

import jax
from tqdm.auto import tqdm

from sleepjax.training.config import flatten_config
from sleepjax.training.evaluate import write_json


def is_primary_process() -> bool:
    """True on the process that writes a run's host-side files (process 0; always, single-host)."""
    return jax.process_index() == 0


def write_config(workdir: str, cfg) -> str:
    """Save the resolved experiment config as ``<workdir>/config.json`` (and a readable text copy).

    Writes unconditionally; :meth:`RunLogger.write_config` is the multi-host-safe call.
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    with open(path, "w") as f:
        json.dump(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg), f, indent=2, default=list)
        f.write("\n")
    with open(os.path.join(workdir, "config.txt"), "w") as f:
        for key, value in flatten_config(cfg).items():
            f.write(f"{key} = {value!r}\n")
    return path


def read_eval_history(workdir: str, up_to_step: int) -> list[dict]:
    """The ``eval.json`` history entries of ``workdir`` up to ``up_to_step`` (empty if none).

    Read on every process (the history is part of what a run returns); only written by one.
    """
    path = os.path.join(workdir, RunLogger.EVAL_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        history = json.load(f).get("history", [])
    return [h for h in history if h["step"] <= up_to_step]


class RunLogger:
    """Every host-side file of a training run, plus the progress bar; a no-op off the primary host.

    Use as a context manager. ``log_train`` is called every ``log_every`` steps with host
    floats (TensorBoard scalars + one ``train_log.jsonl`` line); ``log_eval`` after each
    evaluation with the whole evaluation history (rewrites ``eval.json``).

    Args:
      workdir: the run directory.
      total_steps, start_step, tokens_per_step: for the progress bar and throughput.
      progress_bar: show a tqdm bar on stderr.
      description: the bar's label.
      eval_header: fields written at the top of ``eval.json`` next to ``history``.
      enabled: write anything at all; default :func:`is_primary_process`.
    """

    TRAIN_LOG_FILE = "train_log.jsonl"
    EVAL_FILE = "eval.json"

    def __init__(self, workdir: str, *, total_steps: int, start_step: int, tokens_per_step: int,
                 progress_bar: bool = True, description: str = "train",
                 eval_header: Mapping | None = None, enabled: bool | None = None):
        self.enabled = is_primary_process() if enabled is None else bool(enabled)
        self._workdir = workdir
        self._tokens_per_step = tokens_per_step
        self._eval_header = dict(eval_header or {})
        self._last_step = start_step
        self._last_time = time.perf_counter()
        self._writer = self._log_file = None
        self._bar = tqdm(total=total_steps, initial=start_step, desc=description,
                         disable=not (progress_bar and self.enabled), file=sys.stderr,
                         dynamic_ncols=True)
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter  # heavy import; only when a run starts

        os.makedirs(workdir, exist_ok=True)
        log_path = os.path.join(workdir, self.TRAIN_LOG_FILE)
        _truncate_jsonl(log_path, start_step)
        self._log_file = open(log_path, "a")
        self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write_config(self, cfg) -> None:
        """``config.json`` / ``config.txt`` (see :func:`write_config`)."""
        if self.enabled:
            write_config(self._workdir, cfg)

    def log_train(self, step: int, metrics: Mapping[str, float], learning_rates: Mapping[str, float]):
        now = time.perf_counter()
        steps = step - self._last_step
        tokens_per_s = steps * self._tokens_per_step / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        self._bar.update(steps)
        self._bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{tokens_per_s:,.0f}")
        if not self.enabled:
            return
        for name, value in metrics.items():
            self._writer.add_scalar(f"train/{name}", value, step)
        for name, value in learning_rates.items():
            self._writer.add_scalar(f"lr/{name}", value, step)
        self._writer.add_scalar("train/tokens_per_second", tokens_per_s, step)
        self._writer.add_scalar("train/tokens_seen", step * self._tokens_per_step, step)
        self._log_file.write(json.dumps({"step": step, "tokens_seen": step * self._tokens_per_step,
                                         **metrics, **{f"lr_{k}": v for k, v in
                                                       learning_rates.items()}}) + "\n")
        self._log_file.flush()

    def log_eval(self, step: int, result: Mapping, history: list[Mapping]):
        """Record evaluation ``result`` of ``step``; ``history`` (ending with it) goes to eval.json."""
        if not self.enabled:
            return
        write_json(os.path.join(self._workdir, self.EVAL_FILE),
                   {**self._eval_header, "history": list(history)})
        for difficulty, accuracy in result["accuracy"].items():
            self._writer.add_scalar(f"eval/accuracy_{difficulty}", accuracy, step)
        self._writer.add_scalar("eval/loss", result["loss"], step)
        self._writer.flush()
        self._bar.write(f"step {step}: eval loss {result['loss']:.4f}, exact-match accuracy "
                        + ", ".join(f"{k}={v:.3f}" for k, v in result["accuracy"].items()))

    def close(self):
        self._bar.close()
        if self._writer is not None:
            self._writer.close()
            self._log_file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _truncate_jsonl(path: str, up_to_step: int) -> None:
    """Drop log lines past the resumed step (written by the run that was interrupted)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip() and json.loads(line)["step"] <= up_to_step]
    with open(path, "w") as f:
        f.writelines(lines)
