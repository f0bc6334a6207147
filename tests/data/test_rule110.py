"""Rule 110 task: ground truth by an independent per-cell simulation, layout, determinism, splits."""

from __future__ import annotations

import numpy as np
import pytest

import sleepjax.data as data
from support.data import check_record_contract, checked_records, identities

# Wolfram code 110 written out as its 8 neighbourhoods (left, centre, right) -> new centre.
RULE110_TABLE = {
    (1, 1, 1): 0, (1, 1, 0): 1, (1, 0, 1): 1, (1, 0, 0): 0,
    (0, 1, 1): 1, (0, 1, 0): 1, (0, 0, 1): 1, (0, 0, 0): 0,
}


def reference_step(cells: list[int], periodic: bool) -> list[int]:
    n = len(cells)
    new = []
    for j in range(n):
        if periodic:
            left, right = cells[(j - 1) % n], cells[(j + 1) % n]
        else:
            left = cells[j - 1] if j > 0 else 0
            right = cells[j + 1] if j < n - 1 else 0
        new.append(RULE110_TABLE[(left, cells[j], right)])
    return new


def reference_labels(text: str, num_states: int, cells: int, t: int, periodic: bool) -> str:
    labels = []
    for f in range(num_states):
        row = [int(ch) for ch in text[f * cells:(f + 1) * cells]]
        for _ in range(t):
            row = reference_step(row, periodic)
        labels.append(str(row[0]))
    return "".join(labels)


def test_reference_simulation_matches_the_known_rule110_triangle():
    # A single live cell at the right edge grows the well-known Rule 110 triangle leftwards.
    expected = ["1", "11", "111", "1101", "11111", "110001", "1110011", "11010111"]
    row = [0] * 8 + [1]
    for want in expected:
        assert "".join(map(str, row)).lstrip("0") == want
        row = reference_step(row, periodic=False)


@pytest.mark.parametrize("t,periodic,query_token", [
    (0, True, True), (5, False, True), (32, True, True), (32, False, False), (40, True, False),
])
def test_labels_match_independent_simulation(t, periodic, query_token):
    cfg = data.task_config("rule110", t=t, periodic=periodic, query_token=query_token)
    source = data.make_source(cfg, "train", seed=3)
    tok = source.tokenizer
    for record in checked_records(source, 12, num_answers=1):
        full = tok.decode(np.concatenate([record["inputs"], record["targets"][-1:]]))
        states, tail = full[:96], full[96:]
        labels = tok.decode(record["targets"][record["loss_mask"] == 1])
        assert labels == reference_labels(states, 4, 24, t, periodic)
        assert tail == ("?" if query_token else "") + labels
        assert set(record["difficulty"][record["loss_mask"] == 1].tolist()) == {t}


def test_layout_with_query_token_puts_each_state_in_its_own_window():
    source = data.make_source(data.task_config("rule110", t=4), "test", seed=0)
    assert (source.seq_len, source.window, source.vocab_size) == (100, 24, 3)
    assert source.difficulty_name == "t" and source.eval_difficulties == (4,)
    record = source[7]
    windows = [slice(w * 24, (w + 1) * 24) for w in range(4)]
    for w in windows:   # consolidation windows: 24 state cells, no loss
        assert set(record["inputs"][w].tolist()) <= {0, 1}
        assert record["loss_mask"][w].sum() == 0
    assert source.tokenizer.decode(record["inputs"][96:97]) == "?"
    np.testing.assert_array_equal(np.flatnonzero(record["loss_mask"]), [96, 97, 98, 99])


def test_layout_without_query_token_is_option_a():
    source = data.make_source(data.task_config("rule110", t=4, query_token=False), "test", seed=0)
    assert source.seq_len == 99
    # Label 0 is predicted from the last cell of state 3, inside the fourth window.
    np.testing.assert_array_equal(np.flatnonzero(source[0]["loss_mask"]), [95, 96, 97, 98])


def test_small_configs_change_the_layout():
    cfg = data.task_config("rule110", t=2, num_states=2, cells=10)
    source = data.make_source(cfg, "train", seed=0)
    assert (source.seq_len, source.window) == (2 * 10 + 1 + 2 - 1, 10)
    record = source[0]
    check_record_contract(source, record, num_answers=1)
    text = source.tokenizer.decode(record["inputs"][:20])
    assert source.tokenizer.decode(record["targets"][-2:]) == reference_labels(text, 2, 10, 2, True)


def test_determinism_and_random_access():
    cfg = data.task_config("rule110", t=6)
    a, b = data.make_source(cfg, "train", seed=11), data.make_source(cfg, "train", seed=11)
    far = 987_654_321
    first = a[far]                      # reachable without generating the records before it
    _ = [a[i] for i in range(3)]
    for key, value in b[far].items():
        np.testing.assert_array_equal(value, first[key])
    np.testing.assert_array_equal(a[-1]["inputs"], a[len(a) - 1]["inputs"])
    other_seed = data.make_source(cfg, "train", seed=12)
    assert not np.array_equal(a[5]["inputs"], other_seed[5]["inputs"])
    assert not np.array_equal(a[5]["inputs"], a[6]["inputs"])
    with pytest.raises(IndexError):
        a[len(a)]


def test_train_and_test_are_disjoint_by_hash_partition():
    cfg = data.task_config("rule110", t=1)
    train = data.make_source(cfg, "train", seed=0)
    test = data.make_source(cfg, "test", seed=0)
    train_ids, test_ids = identities(train, range(300)), identities(test, range(300))
    assert len(train_ids) == 300 and len(test_ids) == 300
    assert not train_ids & test_ids
    assert {data.split_of(x) for x in train_ids} == {"train"}
    assert {data.split_of(x) for x in test_ids} == {"test"}
    # The partition ignores the seed: another seed's test set is also outside every train set.
    assert not identities(data.make_source(cfg, "test", seed=1), range(100)) & train_ids
