"""Run outputs: config.json / config.txt, train_log.jsonl, eval.json, TensorBoard, progress bar.

In a multi-host JAX job every process runs the same training code on a shared workdir. Only
the primary process (``jax.process_index() == 0``) writes these host-side files: every other
process gets a :class:`RunLogger` whose writes are no-ops, so the training loop itself has no
per-host branches. Checkpoints are *not* written here: orbax coordinates multi-host saves
itself and must be called on every process.

``train_log.jsonl`` (flushed every line) and ``eval.json`` are the record of a run; TensorBoard
buffers its events, so a killed run loses its last ones and a resumed one would repeat the
steps past its checkpoint. On resume the ``tensorboard/`` directory is therefore rebuilt from
those two files (:func:`rebuild_tensorboard`), so both always hold the same records.
"""

from __future__ import annotations

import json
import os
import shutil
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
        try:
            history = json.load(f).get("history", [])
        except ValueError as error:
            raise ValueError(f"{path}: not valid JSON ({error}); restore it or delete it to "
                             "drop the evaluation history") from None
    return [h for h in history if h["step"] <= up_to_step]


_TRAIN_LOG_SCALARS = {"loss": "train/loss", "grad_norm": "train/grad_norm",
                      "token_accuracy": "train/token_accuracy", "lr_muon": "lr/muon",
                      "lr_adamw": "lr/adamw", "tokens_per_second": "train/tokens_per_second",
                      "tokens_seen": "train/tokens_seen"}


def _add_train_scalars(writer, record: Mapping) -> None:
    """The TensorBoard scalars of one ``train_log.jsonl`` record."""
    for key, tag in _TRAIN_LOG_SCALARS.items():
        if key in record:
            writer.add_scalar(tag, record[key], record["step"], walltime=record.get("time"))


def _add_eval_scalars(writer, step: int, result: Mapping, walltime: float | None = None) -> None:
    for difficulty, accuracy in result["accuracy"].items():
        writer.add_scalar(f"eval/accuracy_{difficulty}", accuracy, step, walltime=walltime)
    writer.add_scalar("eval/loss", result["loss"], step, walltime=walltime)


def rebuild_tensorboard(workdir: str, writer_factory, history: list[Mapping]):
    """Delete ``<workdir>/tensorboard`` and rewrite it from ``train_log.jsonl`` and ``history``
    (the evaluations kept on resume); returns the new writer (``writer_factory(logdir)``)."""
    logdir = os.path.join(workdir, "tensorboard")
    shutil.rmtree(logdir, ignore_errors=True)
    writer = writer_factory(logdir)
    log_path = os.path.join(workdir, RunLogger.TRAIN_LOG_FILE)
    if os.path.exists(log_path):
        with open(log_path) as f:
            for line in f:
                if line.strip():
                    _add_train_scalars(writer, json.loads(line))
    for entry in history:
        _add_eval_scalars(writer, entry["step"], entry)
    writer.flush()
    return writer


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
        if start_step > 0:   # resuming: TensorBoard may lack or repeat events (module doc)
            self._writer = rebuild_tensorboard(workdir, SummaryWriter,
                                               read_eval_history(workdir, start_step))
        else:
            shutil.rmtree(os.path.join(workdir, "tensorboard"), ignore_errors=True)
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
        record = {"step": step, "tokens_seen": step * self._tokens_per_step, **metrics,
                  **{f"lr_{k}": v for k, v in learning_rates.items()},
                  "tokens_per_second": tokens_per_s, "time": time.time()}
        self._log_file.write(json.dumps(record) + "\n")
        self._log_file.flush()
        _add_train_scalars(self._writer, record)

    def log_eval(self, step: int, result: Mapping, history: list[Mapping]):
        """Record evaluation ``result`` of ``step``; ``history`` (ending with it) goes to eval.json."""
        if not self.enabled:
            return
        write_json(os.path.join(self._workdir, self.EVAL_FILE),
                   {**self._eval_header, "history": list(history)})
        _add_eval_scalars(self._writer, step, result)
        self._writer.flush()
        self._bar.write(f"step {step}: eval loss {result['loss']:.4f}, exact-match accuracy "
                        + ", ".join(f"{k}={v:.3f}" for k, v in result["accuracy"].items()))

    def flush(self):
        """Write buffered TensorBoard events to disk (called before each checkpoint)."""
        if self._writer is not None:
            self._writer.flush()

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
    """Drop log lines past the resumed step (written by the run that was interrupted), and a
    last line cut short by a kill in mid-write."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record["step"] <= up_to_step:
                kept.append(json.dumps(record) + "\n")
    with open(path, "w") as f:
        f.writelines(kept)
