"""Shared checks for the data tests (imported by the tests in tests/data)."""

from __future__ import annotations

import numpy as np

RECORD_DTYPES = {
    "inputs": np.int32,
    "targets": np.int32,
    "loss_mask": np.float32,
    "answer_id": np.int32,
    "difficulty": np.int32,
}


def check_record_contract(source, record, *, num_answers: int | None = None) -> None:
    """Asserts the record contract of sleepjax.data.source for one record of ``source``."""
    assert set(record) == set(RECORD_DTYPES)
    for key, dtype in RECORD_DTYPES.items():
        assert record[key].dtype == dtype, (key, record[key].dtype)
        assert record[key].shape == (source.seq_len,), (key, record[key].shape)
    inputs, targets = record["inputs"], record["targets"]
    assert inputs.min() >= 0 and inputs.max() < source.vocab_size
    assert targets.min() >= 0 and targets.max() < source.vocab_size
    # Next-token targets: the targets are the inputs shifted left by one.
    np.testing.assert_array_equal(targets[:-1], inputs[1:])
    on_answer = record["answer_id"] >= 0
    np.testing.assert_array_equal(record["loss_mask"] == 1.0, on_answer)
    assert set(np.unique(record["loss_mask"]).tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(record["difficulty"] >= 0, on_answer)
    ids = record["answer_id"][on_answer]
    assert ids.size > 0
    answers = np.unique(ids)
    np.testing.assert_array_equal(answers, np.arange(answers.size))   # ids are 0..A-1
    if num_answers is not None:
        assert answers.size == num_answers
    for a in answers.tolist():
        positions = np.flatnonzero(record["answer_id"] == a)
        # One answer occupies consecutive positions and has one difficulty.
        np.testing.assert_array_equal(positions, np.arange(positions[0], positions[-1] + 1))
        assert np.unique(record["difficulty"][positions]).size == 1


def identities(source, indices) -> set[bytes]:
    return {source.example(i).identity for i in indices}


def checked_records(source, count: int, *, num_answers: int | None = None):
    """The first ``count`` records of ``source``, each checked against the record contract."""
    for index in range(count):
        record = source[index]
        check_record_contract(source, record, num_answers=num_answers)
        yield record
