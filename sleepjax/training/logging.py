"""Run outputs: config.json / config.txt, train_log.jsonl, eval.json, TensorBoard, progress bar.

In a multi-host JAX job every process runs the same training code on a shared workdir. Only
the primary process (``jax.process_index() == 0``) writes these host-side files: every other
process gets a :class:`RunLogger` whose writes are no-ops, so the training loop itself has no
per-host branches. Checkpoints are *not* written here: orbax coordinates multi-host saves
itself and must be called on every process.

``train_log.jsonl`` (flushed every line; on a bucket, where an object cannot be appended to,
rewritten whole before every checkpoint and evaluation and at the end) and ``eval.json`` are the
record of a run; TensorBoard buffers its events, so a killed run loses its last ones and a
resumed one would repeat the steps past its checkpoint. On resume the ``tensorboard/``
directory is therefore rebuilt from those two files (:func:`rebuild_tensorboard`), so both
always hold the same records. A TensorBoard writer that cannot write (e.g. a ``gs://`` workdir
without google-cloud-storage) is dropped with one warning: the two files hold the same records.

Every path goes through :mod:`sleepjax.training.paths` (local directories and ``gs://``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Mapping

import jax
from tqdm.auto import tqdm

from sleepjax.training import paths
from sleepjax.training.config_io import flatten_config

_log = logging.getLogger(__name__)


def is_primary_process() -> bool:
    """True on the process that writes a run's host-side files (process 0; always, single-host)."""
    return jax.process_index() == 0


def write_config(workdir, cfg):
    """Save the resolved experiment config as ``<workdir>/config.json`` (and a readable text copy).

    Writes unconditionally; :meth:`RunLogger.write_config` is the multi-host-safe call.
    """
    workdir = paths.as_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    paths.write_text(path, json.dumps(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg),
                                      indent=2, default=list) + "\n")
    paths.write_text(workdir / "config.txt", "".join(
        f"{key} = {value!r}\n" for key, value in flatten_config(cfg).items()))
    return path


def read_eval_history(workdir, up_to_step: int) -> list[dict]:
    """The ``eval.json`` history entries of ``workdir`` up to ``up_to_step`` (empty if none).

    Read on every process (the history is part of what a run returns); only written by one.
    """
    path = paths.as_path(workdir) / RunLogger.EVAL_FILE
    if not path.exists():
        return []
    try:
        history = json.loads(path.read_text()).get("history", [])
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


def rebuild_tensorboard(workdir, writer_factory, history: list[Mapping]):
    """Delete ``<workdir>/tensorboard`` and rewrite it from ``train_log.jsonl`` and ``history``
    (the evaluations kept on resume); returns the new writer (``writer_factory(logdir)``)."""
    workdir = paths.as_path(workdir)
    logdir = workdir / "tensorboard"
    paths.remove_tree(logdir)
    writer = writer_factory(os.fspath(logdir))
    log_path = workdir / RunLogger.TRAIN_LOG_FILE
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            if line.strip():
                _add_train_scalars(writer, json.loads(line))
    for entry in history:
        _add_eval_scalars(writer, entry["step"], entry)
    writer.flush()
    return writer


class _TolerantWriter:
    """A TensorBoard writer whose first failure (creating it, or any later call) becomes one
    warning, after which it does nothing: train_log.jsonl and eval.json hold the records."""

    def __init__(self, factory, logdir: str):
        self._writer = None
        self._logdir = logdir
        self._call(lambda: setattr(self, "_writer", factory(logdir)))

    def _call(self, action):
        if self._logdir is None:
            return
        try:
            action()
        except Exception as error:   # any client or storage error: TensorBoard is optional
            _log.warning("TensorBoard: cannot write to %s (%s: %s); continuing without it "
                         "(train_log.jsonl and eval.json hold the same records)", self._logdir,
                         type(error).__name__, _first_line(error))
            self._writer = self._logdir = None

    def add_scalar(self, *args, **kwargs):
        self._call(lambda: self._writer.add_scalar(*args, **kwargs))

    def flush(self):
        self._call(lambda: self._writer.flush())

    def close(self):
        self._call(lambda: self._writer.close())


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""


class _LineLog:
    """``train_log.jsonl`` open for appending. Locally each line is flushed as it is written;
    an object store cannot append, so there the whole file is rewritten on :meth:`flush`."""

    def __init__(self, path, kept_lines: list[str]):
        self._path = path
        self._local = paths.is_local(path)
        self._lines = list(kept_lines)
        self._dirty = True
        if self._local:
            self._file = open(os.fspath(path), "w")
            self._file.writelines(self._lines)
            self._file.flush()
            self._lines = []

    def write(self, line: str) -> None:
        if self._local:
            self._file.write(line)
            self._file.flush()
        else:
            self._lines.append(line)
            self._dirty = True

    def flush(self) -> None:
        if not self._local and self._dirty:
            paths.write_text(self._path, "".join(self._lines))
            self._dirty = False

    def close(self) -> None:
        if self._local:
            self._file.close()
        else:
            self.flush()


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

        workdir = self._workdir = paths.as_path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / self.TRAIN_LOG_FILE
        self._log_file = _LineLog(log_path, _kept_lines(log_path, start_step))

        def tolerant(logdir):
            return _TolerantWriter(SummaryWriter, logdir)

        if start_step > 0:   # resuming: TensorBoard may lack or repeat events (module doc)
            self._writer = rebuild_tensorboard(workdir, tolerant,
                                               read_eval_history(workdir, start_step))
        else:
            paths.remove_tree(workdir / "tensorboard")
            self._writer = tolerant(os.fspath(workdir / "tensorboard"))

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
        _add_train_scalars(self._writer, record)

    def log_eval(self, step: int, result: Mapping, history: list[Mapping]):
        """Record evaluation ``result`` of ``step``; ``history`` (ending with it) goes to eval.json."""
        if not self.enabled:
            return
        self._log_file.flush()
        paths.write_json(self._workdir / self.EVAL_FILE,
                         {**self._eval_header, "history": list(history)})
        _add_eval_scalars(self._writer, step, result)
        self._writer.flush()
        self._bar.write(f"step {step}: eval loss {result['loss']:.4f}, exact-match accuracy "
                        + ", ".join(f"{k}={v:.3f}" for k, v in result["accuracy"].items()))

    def flush(self):
        """Write buffered TensorBoard events and log lines out (called before each checkpoint)."""
        if self._writer is not None:
            self._writer.flush()
            self._log_file.flush()

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


def _kept_lines(path, up_to_step: int) -> list[str]:
    """The log lines of steps up to the resumed one: lines past it (written by the run that was
    interrupted) and a last line cut short by a kill in mid-write are dropped."""
    if not path.exists():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record["step"] <= up_to_step:
            kept.append(json.dumps(record) + "\n")
    return kept
