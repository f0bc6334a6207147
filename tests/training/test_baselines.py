"""Task baselines from the test split, and answer loss pooled per difficulty."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sleepjax import data
from sleepjax.training.baselines import task_baselines
from sleepjax.training.evaluate import LossTally


class _Source:
    """Three records of two answers each: levels 1 and 2, two-token answers at level 2."""

    answer_choices = None

    def __init__(self, answers):
        self.records = []
        for first, second in answers:
            targets = np.array([9, first, 9, *second], np.int32)
            self.records.append({
                "targets": targets,
                "answer_id": np.array([-1, 0, -1, 1, 1], np.int32),
                "difficulty": np.array([-1, 1, -1, 2, 2], np.int32)})

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]


def test_baselines_count_whole_answers_per_difficulty():
    source = _Source([(3, (4, 5)), (3, (4, 6)), (7, (4, 5))])
    out = task_baselines(source, 3)
    assert out["majority"] == {"1": 2 / 3, "2": 2 / 3, "all": 2 / 6}
    assert out["chance"] == {"1": 1 / 2, "2": 1 / 2, "all": 1 / 4}   # distinct answers seen
    # Level 2: position 0 always 4 (0 nats), position 1 is 5, 6, 5.
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert out["marginal_loss"]["2"] == pytest.approx(h / 2)
    assert out["answers"] == {"1": 3, "2": 3, "all": 6}
    source.answer_choices = 10
    assert task_baselines(source, 3)["chance"]["all"] == 0.1
    assert task_baselines(source, 1)["majority"]["all"] == 0.5     # only the first record


def test_rule110_baselines_match_the_label_bias():
    # t = 1: a label is 1 for 5 of the 8 neighbourhoods, so always answering 1111 is right
    # about (5/8)^4 = 0.153 of the time, well above chance 1/16.
    source = data.make_source(data.task_config("rule110", t=1), "test", 0)
    out = task_baselines(source, 2048)
    assert out["chance"]["all"] == 1 / 16
    assert abs(out["majority"]["all"] - (5 / 8) ** 4) < 0.03
    assert out["marginal_loss"]["all"] == pytest.approx(
        -(5 / 8 * math.log(5 / 8) + 3 / 8 * math.log(3 / 8)), abs=0.02)


def test_loss_tally_pools_answer_tokens_by_difficulty():
    tally = LossTally()
    tally.add(np.array([[0.0, 1.0, 3.0], [2.0, 0.0, 5.0]]), np.array([[0, 1, 1], [1, 0, 1]]),
              np.array([[-1, 1, 2], [1, -1, 2]]))
    assert tally.result() == {"1": 1.5, "2": 4.0, "all": 11 / 4}
