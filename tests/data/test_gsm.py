"""GSM-style task: every record is parsed back into equations and solved independently."""

from __future__ import annotations

import numpy as np
import pytest

import sleepjax.data as data
from support.data import checked_records, identities


def parse_problem(source, record):
    """Words -> (queried quantity, {quantity: equation}, answer text).

    A quantity is (person, item); an equation is ('leaf', n), ('add' | 'sub' | 'mul', q, n) or
    ('sum', q1, q2).
    """
    words = source.tokenizer.decode_tokens(
        np.concatenate([record["inputs"], record["targets"][-1:]]), skip_pad=True)
    assert words[:4] == ["question", ":", "how", "many"]
    item, does, person, have, mark = words[4:9]
    assert (does, have, mark) == ("does", "have", "?")
    answer_at = words.index("answer")
    assert words[answer_at + 1] == ":"
    answer = "".join(words[answer_at + 2:])
    body = words[9:answer_at]
    assert body[-1] == "."
    equations = {}
    for sentence in " ".join(body[:-1]).split(" . "):
        w = sentence.split()
        target_person, has = w[0], w[1]
        assert has == "has"
        digits = []
        rest = w[2:]
        while rest and rest[0].isdigit():
            digits.append(rest.pop(0))
        number = int("".join(digits)) if digits else None
        if len(rest) == 1:
            key, equation = (target_person, rest[0]), ("leaf", number)
        elif rest[0] in ("more", "fewer"):
            word, target_item, than, q_person, has2, q_item = rest
            assert (than, has2) == ("than", "has")
            key = (target_person, target_item)
            equation = ("add" if word == "more" else "sub", (q_person, q_item), number)
        elif rest[0] == "times":
            times, as1, many, target_item, as2, q_person, has2, q_item = rest
            assert (as1, many, as2, has2) == ("as", "many", "as", "has")
            key, equation = (target_person, target_item), ("mul", (q_person, q_item), number)
        else:
            as1, many, target_item, as2, p1, has1, i1, and_, p2, has2, i2, combined = rest
            assert (as1, many, as2, has1, and_, has2, combined) == (
                "as", "many", "as", "has", "and", "has", "combined")
            assert number is None
            key, equation = (target_person, target_item), ("sum", (p1, i1), (p2, i2))
        assert key not in equations, f"{key} defined twice"
        equations[key] = equation
    return (person, item), equations, answer


def solve(equations, quantity, memo, visiting=frozenset()):
    """Value of a quantity by substitution (raises on a cycle or an undefined quantity)."""
    if quantity in memo:
        return memo[quantity]
    assert quantity not in visiting, "cyclic definition"
    op, *args = equations[quantity]
    inner = visiting | {quantity}
    if op == "leaf":
        value = args[0]
    elif op == "add":
        value = solve(equations, args[0], memo, inner) + args[1]
    elif op == "sub":
        value = solve(equations, args[0], memo, inner) - args[1]
    elif op == "mul":
        value = solve(equations, args[0], memo, inner) * args[1]
    else:
        value = solve(equations, args[0], memo, inner) + solve(equations, args[1], memo, inner)
    memo[quantity] = value
    return value


def operations_needed(equations, quantity):
    """Derived (non-leaf) quantities among the quantity and its ancestors."""
    seen, stack = set(), [quantity]
    while stack:
        q = stack.pop()
        if q in seen:
            continue
        seen.add(q)
        op, *args = equations[q]
        stack += [a for a in args if isinstance(a, tuple)]
    return sum(equations[q][0] != "leaf" for q in seen)


@pytest.mark.parametrize("split,overrides", [
    ("train", {}),
    ("test", {}),
    ("train", dict(max_ops=3, eval_ops=(1, 3), seq_len=90, window=48, max_value=20)),
    ("test", dict(distractors=False)),
    ("train", dict(min_ops=12, max_ops=12, eval_ops=(12,), seq_len=400, max_value=500)),
])
def test_answers_and_difficulty_match_the_parsed_and_solved_problem(split, overrides):
    cfg = data.task_config("gsm", **overrides)
    source = data.make_source(cfg, split, seed=2)
    ops_seen = set()
    for record in checked_records(source, 30, num_answers=1):
        query, equations, answer = parse_problem(source, record)
        memo = {}
        for quantity in equations:          # every stated quantity is well defined and in range
            assert 0 <= solve(equations, quantity, memo) <= cfg.max_value
        assert answer == str(memo[query])
        ops = operations_needed(equations, query)
        positions = np.flatnonzero(record["loss_mask"])
        np.testing.assert_array_equal(positions, np.arange(cfg.seq_len - len(answer), cfg.seq_len))
        assert set(record["difficulty"][positions].tolist()) == {ops}
        assert source.tokenizer.decode(record["targets"][positions]).replace(" ", "") == answer
        ops_seen.add(ops)
        if cfg.distractors:
            # Distractors: facts off the query's dependency path fill the sequence.
            assert len(equations) > 2 * ops + 1
            assert (record["inputs"] == source.tokenizer.pad_id).sum() <= 14
    allowed = set(cfg.eval_ops) if split == "test" else set(range(cfg.min_ops, cfg.max_ops + 1))
    assert ops_seen <= allowed
    assert len(ops_seen) >= min(len(allowed), 3)


def test_layout_question_first_and_answer_at_the_end():
    source = data.make_source(data.task_config("gsm"), "train", seed=0)
    assert (source.seq_len, source.window) == (320, 192)
    assert source.difficulty_name == "ops" and source.eval_difficulties == (2, 4, 6, 8)
    words = source.tokenizer.decode_tokens(source[5]["inputs"], skip_pad=True)
    assert words[0] == "question"
    targets = source.tokenizer.decode_tokens(source[5]["targets"])
    answer_marker = len(targets) - 1 - targets[::-1].index("answer")
    assert targets[answer_marker + 1] == ":"
    assert all(t.isdigit() for t in targets[answer_marker + 2:])


def test_determinism_and_disjoint_splits():
    cfg = data.task_config("gsm", max_ops=2, eval_ops=(1, 2), seq_len=64, window=32)
    a, b = data.make_source(cfg, "train", seed=5), data.make_source(cfg, "train", seed=5)
    np.testing.assert_array_equal(a[10**8]["inputs"], b[10**8]["inputs"])
    assert not np.array_equal(a[1]["inputs"], data.make_source(cfg, "train", seed=6)[1]["inputs"])
    train = identities(a, range(150))
    test = identities(data.make_source(cfg, "test", seed=5), range(150))
    assert not train & test
    assert {data.split_of(x) for x in train} == {"train"}


@pytest.mark.parametrize("overrides,message", [
    (dict(seq_len=100), r"task\.seq_len: must be >= 178"),
    (dict(eval_ops=(2, 9)), r"task\.eval_ops"),
    (dict(min_ops=0), r"task\.min_ops"),
    (dict(max_ops=0), r"task\.max_ops"),
    (dict(max_value=1000), r"task\.max_value"),
    (dict(window=321), r"task\.window"),
    (dict(distractors="no"), r"task\.distractors: must be a bool"),
    (dict(k_max=3), r"task\.k_max is a depo field but task\.name is 'gsm'"),
])
def test_bad_gsm_configs_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        data.task_config("gsm", **overrides)
