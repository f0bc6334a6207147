"""Depo task: answers checked by walking the parsed cycle, layout, determinism, splits, config."""

from __future__ import annotations

import numpy as np
import pytest

import sleepjax.data as data
from support.data import checked_records, identities


def parse_record(source, record):
    """Parses a record's text back into (successor map, queries [(k, start, answer)], pads)."""
    cfg = source.task_cfg
    words = source.tokenizer.decode_tokens(
        np.concatenate([record["inputs"], record["targets"][-1:]]))
    context, qa = words[:cfg["context_tokens"]], words[cfg["context_tokens"]:]
    num_pads = 0
    while num_pads < len(context) and context[num_pads] == "<pad>":
        num_pads += 1
    edges = " ".join(context[num_pads:]).split(",")
    assert edges[-1] == ""                   # the edge list ends with ','
    successor = {}
    for edge in edges[:-1]:
        src, arrow, dst = edge.split()
        assert arrow == "->" and src not in successor
        successor[src] = dst
    queries = []
    for q in range(0, len(qa), 6):
        hop, hops_word, after, start, colon, answer = qa[q:q + 6]
        assert (hops_word, after, colon) == ("hops", "after", ":")
        assert hop.startswith("<") and hop.endswith(">")
        queries.append((int(hop[1:-1]), start, answer))
    return successor, queries, num_pads


def walk(successor, start, k):
    node = start
    for _ in range(k):
        node = successor[node]
    return node


@pytest.mark.parametrize("split", ["train", "test"])
def test_answers_are_the_nodes_reached_by_walking_the_cycle(split):
    cfg = data.task_config("depo")
    source = data.make_source(cfg, split, seed=4)
    hops_seen = set()
    for record in checked_records(source, 25, num_answers=10):
        successor, queries, num_pads = parse_record(source, record)
        n = len(successor)
        assert cfg.min_nodes <= n <= cfg.max_nodes
        assert num_pads == cfg.context_tokens - 4 * n
        # The edges form ONE directed cycle through all n nodes.
        assert sorted(successor.values()) == sorted(successor)
        node, visited = next(iter(successor)), set()
        while node not in visited:
            visited.add(node)
            node = successor[node]
        assert len(visited) == n
        loss_positions = np.flatnonzero(record["loss_mask"])
        np.testing.assert_array_equal(loss_positions, 300 + 6 * np.arange(10) + 4)
        predicted_from = source.tokenizer.decode_tokens(record["inputs"][loss_positions])
        assert predicted_from == [":"] * 10
        for q, (k, start, answer) in enumerate(queries):
            assert answer == walk(successor, start, k)
            assert record["difficulty"][loss_positions[q]] == k
            assert record["answer_id"][loss_positions[q]] == q
            hops_seen.add(k)
    if split == "test":
        assert hops_seen == set(cfg.eval_k)
    else:
        assert hops_seen <= set(range(1, 17)) and len(hops_seen) >= 12


def test_layout_puts_context_in_four_windows_and_queries_in_the_fifth():
    source = data.make_source(data.task_config("depo"), "train", seed=0)
    assert (source.seq_len, source.window) == (359, 75)
    assert source.difficulty_name == "k" and source.eval_difficulties == (1, 2, 4, 8, 16)
    record = source[3]
    assert record["loss_mask"][:300].sum() == 0
    assert record["loss_mask"][300:].sum() == 10
    assert source.vocab_size == 6 + 16 + 100


def test_small_config():
    cfg = data.task_config("depo", min_nodes=3, max_nodes=5, num_node_symbols=8,
                           context_tokens=24, num_queries=3, k_max=6, eval_k=(2, 6), window=8)
    for split in ("train", "test"):
        source = data.make_source(cfg, split, seed=1)
        assert source.seq_len == 24 + 18 - 1
        for record in checked_records(source, 10, num_answers=3):
            successor, queries, _ = parse_record(source, record)
            for k, start, answer in queries:
                assert answer == walk(successor, start, k)


def test_determinism_and_disjoint_splits():
    cfg = data.task_config("depo")
    a, b = data.make_source(cfg, "train", seed=9), data.make_source(cfg, "train", seed=9)
    np.testing.assert_array_equal(a[123_456_789]["inputs"], b[123_456_789]["inputs"])
    assert not np.array_equal(a[0]["inputs"], data.make_source(cfg, "train", seed=10)[0]["inputs"])
    train = identities(a, range(150))
    test = identities(data.make_source(cfg, "test", seed=9), range(150))
    assert len(train) == 150 and len(test) == 150 and not train & test


def test_small_graph_space_is_still_disjoint():
    # Directed cycles on 3 or 4 of 5 symbols: C(5,3) * 2! + C(5,4) * 3! = 50 graphs, so draws
    # collide all the time and only the hash partition keeps the splits apart.
    cfg = data.task_config("depo", min_nodes=3, max_nodes=4, num_node_symbols=5, context_tokens=16,
                           num_queries=2, k_max=4, eval_k=(1, 4), window=8)
    train = identities(data.make_source(cfg, "train", seed=0), range(200))
    test = identities(data.make_source(cfg, "test", seed=0), range(200))
    assert len(train) + len(test) == 50 and not train & test


@pytest.mark.parametrize("overrides,message", [
    (dict(context_tokens=200), r"task\.context_tokens: must be >= 4 \* max_nodes"),
    (dict(min_nodes=80), r"task\.max_nodes: must be >= min_nodes"),
    (dict(num_node_symbols=50), r"task\.num_node_symbols"),
    (dict(eval_k=(1, 32)), r"task\.eval_k"),
    (dict(eval_k=()), r"task\.eval_k"),
    (dict(eval_k="1,2"), r"task\.eval_k: must be a tuple of ints"),
    (dict(k_min=0), r"task\.k_min"),
    (dict(window=400), r"task\.window: must be in \[1, seq_len=359\]"),
    (dict(t=4), r"task\.t is a rule110 field but task\.name is 'depo'"),
])
def test_bad_depo_configs_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        data.task_config("depo", **overrides)


def test_depo_field_on_rule110_is_rejected():
    with pytest.raises(ValueError, match=r"task\.k_max is a depo field but task\.name is 'rule110'"):
        data.task_config("rule110", k_max=3)
