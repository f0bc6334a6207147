"""Reference points for a task's accuracy and loss, computed from its test split.

A table that reads "N=1: 0.18" means little unless the reader sees what answering without
looking would score. For the first ``num_examples`` test records (the ones the evaluation uses):

* ``chance``: uniform guessing, 1 / the number of possible answers (the source's
  ``answer_choices``: Rule 110 with 4 label bits 1/16, Depo 1 / node names, GSM 1 / values);
  for a source without it, 1 / the number of distinct answers seen;
* ``majority``: exact-match accuracy of always giving the most frequent answer (as a whole token
  sequence) at that difficulty. Rule 110's label bits are biased (t = 1: P(1) = 0.63), so this is
  well above chance;
* ``marginal_loss``: mean cross-entropy (nats per answer token) of predicting each answer token
  from the empirical distribution of its position's tokens at that difficulty: the loss of a
  model that ignores the context.

Each is given per difficulty (string keys, as the evaluation's) and pooled over all answers
(``"all"``).
"""

from __future__ import annotations

import collections
import math

import numpy as np


def _answers_by_level(source, num_examples: int) -> dict[int, list[tuple[int, ...]]]:
    """``{difficulty: [answer token tuple, ...]}`` over the first ``num_examples`` records."""
    answers: dict[int, list[tuple[int, ...]]] = collections.defaultdict(list)
    for index in range(min(num_examples, len(source))):
        record = source[index]
        ids, targets, levels = record["answer_id"], record["targets"], record["difficulty"]
        for answer in np.unique(ids[ids >= 0]):
            at = ids == answer
            answers[int(levels[at][0])].append(tuple(int(t) for t in targets[at]))
    return answers


def _summary(answers: list[tuple[int, ...]], choices: int | None) -> dict[str, float]:
    counts = collections.Counter(answers)
    total = len(answers)
    position_counts: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for answer in answers:
        for position, token in enumerate(answer):
            position_counts[position][token] += 1
    nats = tokens = 0.0
    for counter in position_counts.values():
        n = sum(counter.values())
        nats += -sum(c * math.log(c / n) for c in counter.values())
        tokens += n
    return {"chance": 1.0 / (choices or len(counts)), "majority": max(counts.values()) / total,
            "marginal_loss": nats / tokens, "answers": total}


def task_baselines(source, num_examples: int) -> dict[str, dict[str, float]]:
    """``{"chance": {level: p}, "majority": {...}, "marginal_loss": {...}, "answers": {...}}``."""
    by_level = _answers_by_level(source, num_examples)
    if not by_level:
        raise ValueError(f"{source!r}: no answers in its first {num_examples} records")
    choices = getattr(source, "answer_choices", None)
    per_level = {str(level): _summary(by_level[level], choices) for level in sorted(by_level)}
    per_level["all"] = _summary([a for level in sorted(by_level) for a in by_level[level]], choices)
    return {name: {level: values[name] for level, values in per_level.items()}
            for name in ("chance", "majority", "marginal_loss", "answers")}
