"""Exact-match evaluation grouped by task difficulty (t, k or number of operations)."""

from __future__ import annotations

import collections
import json
import os
from typing import Callable, Iterable, Mapping

import jax
import numpy as np

EVAL_BATCH_KEYS = ("inputs", "targets", "loss_mask")


def answer_outcomes(correct: np.ndarray, answer_id: np.ndarray, difficulty: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per answer: (all its tokens right?, its difficulty).

    ``correct`` bool [B, T] per token; ``answer_id`` int [B, T] (-1 off-answer; ids are per
    row, an answer may span several tokens); ``difficulty`` int [B, T]. An answer counts as
    right only if every one of its tokens is. Returns two 1-D arrays over the answers found.
    """
    correct, answer_id, difficulty = (np.asarray(a) for a in (correct, answer_id, difficulty))
    if not correct.shape == answer_id.shape == difficulty.shape or correct.ndim != 2:
        raise ValueError(f"correct/answer_id/difficulty: expected equal [B, T] shapes, got "
                         f"{correct.shape}, {answer_id.shape}, {difficulty.shape}")
    on_answer = answer_id >= 0
    if not on_answer.any():
        return np.zeros(0, bool), np.zeros(0, np.int64)
    ids_per_row = int(answer_id.max()) + 1
    rows = np.broadcast_to(np.arange(answer_id.shape[0])[:, None], answer_id.shape)
    keys = (rows * ids_per_row + answer_id)[on_answer]
    size = answer_id.shape[0] * ids_per_row
    tokens = np.bincount(keys, minlength=size)
    right = np.bincount(keys, weights=correct[on_answer].astype(np.float64), minlength=size)
    level = np.full(size, np.iinfo(np.int64).min, np.int64)
    np.maximum.at(level, keys, difficulty[on_answer].astype(np.int64))
    present = tokens > 0
    return (right[present] == tokens[present]), level[present]


class _PerDifficultyMean:
    """Sums and counts kept per difficulty; ``result()`` gives each difficulty's mean and the
    pooled mean over all of them (``"all"``)."""

    def __init__(self):
        self._sum: dict[int, float] = {}
        self._count: dict[int, int] = {}

    def _add(self, values: np.ndarray, levels: np.ndarray) -> None:
        for value in np.unique(levels):
            sel = levels == value
            self._sum[int(value)] = self._sum.get(int(value), 0) + values[sel].sum()
            self._count[int(value)] = self._count.get(int(value), 0) + int(sel.sum())

    def result(self) -> dict[str, float]:
        """``{"<difficulty>": mean, ..., "all": pooled mean}`` (string keys, JSON-ready)."""
        out = {str(k): float(self._sum[k] / self._count[k]) for k in sorted(self._count)}
        total = sum(self._count.values())
        out["all"] = float(sum(self._sum.values()) / total) if total else float("nan")
        return out

    def counts(self) -> dict[str, int]:
        out = {str(k): self._count[k] for k in sorted(self._count)}
        out["all"] = sum(self._count.values())
        return out


class ExactMatchTally(_PerDifficultyMean):
    """Accumulates answer outcomes over batches; :meth:`result` gives accuracy per difficulty."""

    def add(self, correct, answer_id, difficulty) -> None:
        ok, level = answer_outcomes(correct, answer_id, difficulty)
        self._add(ok.astype(np.int64), level)


class LossTally(_PerDifficultyMean):
    """Mean answer-token cross-entropy per difficulty (the paper's Fig. 3 is test loss per k)."""

    def add(self, token_loss, loss_mask, difficulty) -> None:
        on_answer = np.asarray(loss_mask) > 0
        self._add(np.asarray(token_loss)[on_answer].astype(np.float64),
                  np.asarray(difficulty)[on_answer])


def iterate_eval_batches(source, num_examples: int, batch_size: int) -> Iterable[tuple[dict, int]]:
    """Yield ``(batch, valid_rows)`` over the first ``num_examples`` records of ``source``.

    Every batch has exactly ``batch_size`` rows (one compiled shape); the last one is padded
    with copies of its first record whose ``loss_mask`` is 0 and ``answer_id`` is -1, so padding
    counts for nothing.
    """
    num_examples = min(num_examples, len(source))
    for start in range(0, num_examples, batch_size):
        records = [source[i] for i in range(start, min(start + batch_size, num_examples))]
        valid = len(records)
        while len(records) < batch_size:
            pad = dict(records[0])
            pad["loss_mask"] = np.zeros_like(pad["loss_mask"])
            pad["answer_id"] = np.full_like(pad["answer_id"], -1)
            pad["difficulty"] = np.full_like(pad["difficulty"], -1)
            records.append(pad)
        yield {k: np.stack([r[k] for r in records]) for k in records[0]}, valid


def evaluate(eval_step: Callable[[dict], dict], source, num_examples: int, batch_size: int,
             to_device: Callable[[dict], dict] | None = None) -> dict:
    """Exact-match accuracy by difficulty and mean answer loss on ``source``.

    ``eval_step(batch) -> {"correct", "loss_sum", "answer_tokens"}`` (params bound, outputs
    replicated); ``to_device`` turns a host batch of :data:`EVAL_BATCH_KEYS` into device arrays.
    Returns ``{"accuracy": {...}, "examples": {...}, "loss": float, "loss_by_difficulty":
    {...}, "sleep_passes": {"mean", "histogram"}}`` (``loss_by_difficulty`` when ``eval_step``
    also returns ``token_loss``; ``sleep_passes``, over every sleeping window of every example,
    when it returns ``sleep_passes`` and the task has sleeping windows).
    """
    tally, losses = ExactMatchTally(), LossTally()
    passes_used: collections.Counter = collections.Counter()
    loss_sum = tokens = 0.0
    for batch, valid in iterate_eval_batches(source, num_examples, batch_size):
        device_batch = {k: batch[k] for k in EVAL_BATCH_KEYS}
        if to_device is not None:
            device_batch = to_device(device_batch)
        out = jax.device_get(eval_step(device_batch))
        tally.add(out["correct"], batch["answer_id"], batch["difficulty"])
        if "token_loss" in out:
            losses.add(out["token_loss"], batch["loss_mask"], batch["difficulty"])
        loss_sum += float(out["loss_sum"])
        tokens += float(out["answer_tokens"])
        if "sleep_passes" in out:   # [B, sleeping windows]; padding rows left out
            passes_used.update(np.asarray(out["sleep_passes"])[:valid].ravel().tolist())
    result = {"accuracy": tally.result(), "examples": tally.counts(),
              "loss": loss_sum / tokens if tokens else float("nan")}
    if passes_used:
        result["sleep_passes"] = sleep_passes_summary(passes_used)
    by_difficulty = losses.result()
    if len(by_difficulty) > 1:   # some answer was seen
        result["loss_by_difficulty"] = by_difficulty
    return result


def sleep_passes_summary(counts: Mapping[int, int]) -> dict:
    """``{"mean", "histogram": {"<passes>": windows}}`` of the passes the sleeping windows used."""
    total = sum(counts.values())
    return {"mean": sum(int(k) * v for k, v in counts.items()) / total,
            "histogram": {str(k): int(counts[k]) for k in sorted(counts, key=int)}}


def write_json(path: str, payload: Mapping) -> None:
    """Write ``payload`` as indented JSON atomically (temp file + rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
