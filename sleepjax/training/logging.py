"""Run logging: a progress bar with loss and throughput, TensorBoard scalars, config.json."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Mapping

from tqdm.auto import tqdm

from sleepjax.training.config import flatten_config


def write_config(workdir: str, cfg) -> str:
    """Save the resolved experiment config as ``<workdir>/config.json`` (and a readable text copy)."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    with open(path, "w") as f:
        json.dump(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg), f, indent=2, default=list)
        f.write("\n")
    with open(os.path.join(workdir, "config.txt"), "w") as f:
        for key, value in flatten_config(cfg).items():
            f.write(f"{key} = {value!r}\n")
    return path


class RunLogger:
    """Progress bar (loss, tokens/s) + TensorBoard event files under ``<workdir>/tensorboard``.

    Use as a context manager. ``log_train`` is called every ``log_every`` steps with host
    floats; ``log_eval`` after each evaluation.
    """

    def __init__(self, workdir: str, *, total_steps: int, start_step: int, tokens_per_step: int,
                 progress_bar: bool = True, description: str = "train"):
        from tensorboardX import SummaryWriter  # heavy import; only when a run starts

        self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
        self._tokens_per_step = tokens_per_step
        self._bar = tqdm(total=total_steps, initial=start_step, desc=description,
                         disable=not progress_bar, file=sys.stderr, dynamic_ncols=True)
        self._last_step = start_step
        self._last_time = time.perf_counter()

    def log_train(self, step: int, metrics: Mapping[str, float], learning_rates: Mapping[str, float]):
        now = time.perf_counter()
        steps = step - self._last_step
        tokens_per_s = steps * self._tokens_per_step / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        for name, value in metrics.items():
            self._writer.add_scalar(f"train/{name}", value, step)
        for name, value in learning_rates.items():
            self._writer.add_scalar(f"lr/{name}", value, step)
        self._writer.add_scalar("train/tokens_per_second", tokens_per_s, step)
        self._writer.add_scalar("train/tokens_seen", step * self._tokens_per_step, step)
        self._bar.update(steps)
        self._bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{tokens_per_s:,.0f}")

    def log_eval(self, step: int, result: Mapping):
        for difficulty, accuracy in result["accuracy"].items():
            self._writer.add_scalar(f"eval/accuracy_{difficulty}", accuracy, step)
        self._writer.add_scalar("eval/loss", result["loss"], step)
        self._writer.flush()
        self._bar.write(f"step {step}: eval loss {result['loss']:.4f}, exact-match accuracy "
                        + ", ".join(f"{k}={v:.3f}" for k, v in result["accuracy"].items()))

    def close(self):
        self._bar.close()
        self._writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
