"""Exact match per answer, grouped by difficulty; eval batching pads without counting padding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sleepjax.training.evaluate import (ExactMatchTally, answer_outcomes, evaluate,
                                        iterate_eval_batches, write_json)


def test_an_answer_is_right_only_if_all_its_tokens_are():
    answer_id = np.array([[-1, 0, 0, -1, 1, 1, 1],
                          [-1, -1, 0, 0, 0, -1, -1]])
    difficulty = np.array([[-1, 2, 2, -1, 4, 4, 4],
                           [-1, -1, 4, 4, 4, -1, -1]])
    correct = np.array([[False, True, True, False, True, False, True],   # answer 1 has a wrong token
                        [False, False, True, True, True, False, False]])
    ok, level = answer_outcomes(correct, answer_id, difficulty)
    assert sorted(zip(level.tolist(), ok.tolist())) == [(2, True), (4, False), (4, True)]
    tally = ExactMatchTally()
    tally.add(correct, answer_id, difficulty)
    assert tally.result() == {"2": 1.0, "4": 0.5, "all": 2 / 3}
    assert tally.counts() == {"2": 1, "4": 2, "all": 3}


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="answer_id"):
        answer_outcomes(np.zeros((2, 3), bool), np.zeros((2, 4), int), np.zeros((2, 3), int))


class _Source:
    """Five records of length 3 whose single answer token is at position 2 with difficulty i % 2."""

    def __len__(self):
        return 5

    def __getitem__(self, i):
        return {"inputs": np.full(3, i, np.int32), "targets": np.full(3, i, np.int32),
                "loss_mask": np.array([0, 0, 1], np.float32),
                "answer_id": np.array([-1, -1, 0], np.int32),
                "difficulty": np.array([-1, -1, i % 2], np.int32)}


def test_eval_batches_are_padded_and_padding_is_ignored(tmp_path):
    batches = list(iterate_eval_batches(_Source(), num_examples=5, batch_size=4))
    assert [b["inputs"].shape for b, _ in batches] == [(4, 3), (4, 3)]
    assert [valid for _, valid in batches] == [4, 1]
    assert (batches[1][0]["answer_id"][1:] == -1).all() and batches[1][0]["loss_mask"][1:].sum() == 0

    def eval_step(batch):   # predicts right exactly for even inputs
        correct = np.broadcast_to((batch["inputs"][:, :1] % 2 == 0), batch["inputs"].shape)
        return {"correct": correct, "loss_sum": np.float32(batch["loss_mask"].sum()),
                "answer_tokens": np.float32(batch["loss_mask"].sum())}

    result = evaluate(eval_step, _Source(), num_examples=5, batch_size=4)
    # Records 0, 2, 4 have difficulty 0 and are right; 1, 3 have difficulty 1 and are wrong.
    assert result["accuracy"] == {"0": 1.0, "1": 0.0, "all": 0.6}
    assert result["examples"] == {"0": 3, "1": 2, "all": 5} and result["loss"] == 1.0
    path = str(tmp_path / "eval.json")
    write_json(path, {"history": [result]})
    with open(path) as f:
        assert json.load(f)["history"][0]["accuracy"]["all"] == 0.6
