"""Depo multi-hop retrieval task (paper §5.2, after Allen-Zhu's Physics of LMs 4.1).

A record is a shuffled directed cycle over n ~ U[min_nodes, max_nodes] distinct node symbols,
written as its n edges in random order, 4 tokens per edge (``src -> dst ,``), left-padded with
``<pad>`` to ``context_tokens`` tokens; then ``num_queries`` queries of 6 tokens each:

    <pad> ... <pad> n17 -> n3 , n40 -> n17 , ... | <4> hops after n3 : n52 <1> hops after ...

The answer of a query is the node reached from its start node by following k outgoing edges. It
is the target of the ``:`` position, so every answer is exactly one loss position, predicted from
a token of the same (query) window: no separator is needed, unlike Rule 110. With the defaults
(300 context tokens, 10 queries, inputs = tokens[:-1]) T = 359 and windows of L = 75 put the
context in exactly 4 consolidation windows and all queries in the fifth.

k ~ U[k_min, k_max] in training; in the test split k is drawn uniformly from ``eval_k`` so that
each reported k gets as many samples. The default min_nodes = 17 > k_max keeps every k <= 16 hop
from wrapping around the whole cycle (the paper does not state the node-count distribution).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from sleepjax.data import fields as F
from sleepjax.data.source import Example, ProceduralSource
from sleepjax.data.tokenizers import Tokenizer

NAME = "depo"
DIFFICULTY_NAME = "k"
EDGE_TOKENS = 4     # src -> dst ,
QUERY_TOKENS = 6    # <k> hops after start : answer

FIELDS = {
    "min_nodes": F.Field(17, F.INT, "fewest nodes of a cycle"),
    "max_nodes": F.Field(75, F.INT, "most nodes of a cycle (paper: up to 75)"),
    "num_node_symbols": F.Field(100, F.INT, "single-token node names the nodes are drawn from"),
    "context_tokens": F.Field(300, F.INT, "edge-list length after left padding (paper: 300)"),
    "num_queries": F.Field(10, F.INT, "queries per record (paper: 10)"),
    "k_min": F.Field(1, F.INT, "smallest hop count in training"),
    "k_max": F.Field(16, F.INT, "largest hop count in training (paper: 16)"),
    "eval_k": F.Field((1, 2, 4, 8, 16), F.INTS, "hop counts of the test split, drawn uniformly"),
    "window": F.Field(75, F.INT, "natural attention window L (paper: 75)"),
    "num_train": F.Field(1_000_000_000, F.INT, "records in the train split (generated on demand)"),
    "num_test": F.Field(2000, F.INT, "records in the test split"),
}


def seq_len(cfg: Mapping[str, Any]) -> int:
    return cfg["context_tokens"] + QUERY_TOKENS * cfg["num_queries"] - 1


def default_window(cfg: Mapping[str, Any]) -> int:
    return cfg["window"]


def check(cfg: Mapping[str, Any]) -> None:
    """Cross-field checks of a type-checked depo config (raises ValueError naming the key)."""
    F.require(cfg["min_nodes"] >= 2, "min_nodes", "must be >= 2 (a cycle needs two nodes)",
              cfg["min_nodes"])
    F.require(cfg["max_nodes"] >= cfg["min_nodes"], "max_nodes",
              f"must be >= min_nodes={cfg['min_nodes']}", cfg["max_nodes"])
    F.require(cfg["num_node_symbols"] >= cfg["max_nodes"], "num_node_symbols",
              f"must be >= max_nodes={cfg['max_nodes']} (nodes have distinct names)",
              cfg["num_node_symbols"])
    F.require(cfg["context_tokens"] >= EDGE_TOKENS * cfg["max_nodes"], "context_tokens",
              f"must be >= {EDGE_TOKENS} * max_nodes = {EDGE_TOKENS * cfg['max_nodes']} "
              f"(every edge takes {EDGE_TOKENS} tokens)", cfg["context_tokens"])
    F.require(cfg["num_queries"] >= 1, "num_queries", "must be >= 1", cfg["num_queries"])
    F.require(cfg["k_min"] >= 1, "k_min", "must be >= 1", cfg["k_min"])
    F.require(cfg["k_max"] >= cfg["k_min"], "k_max", f"must be >= k_min={cfg['k_min']}",
              cfg["k_max"])
    F.require(all(1 <= k <= cfg["k_max"] for k in cfg["eval_k"]), "eval_k",
              f"every k must be in [1, k_max={cfg['k_max']}] (hop tokens exist up to k_max)",
              cfg["eval_k"])
    F.require(1 <= cfg["window"] <= seq_len(cfg), "window",
              f"must be in [1, seq_len={seq_len(cfg)}]", cfg["window"])
    for key in ("num_train", "num_test"):
        F.require(cfg[key] >= 1, key, "must be >= 1", cfg[key])


def make_tokenizer(cfg: Mapping[str, Any]) -> Tokenizer:
    words = ["<pad>", "->", ",", "hops", "after", ":"]
    words += [f"<{k}>" for k in range(1, cfg["k_max"] + 1)]
    words += [f"n{j}" for j in range(cfg["num_node_symbols"])]
    return Tokenizer(words, pad_token="<pad>")


class DepoSource(ProceduralSource):
    """Random-access source of Depo records (see the module docstring for the layout)."""

    task_name = NAME
    fields = FIELDS
    check_config = staticmethod(check)
    difficulty_name = DIFFICULTY_NAME

    def __init__(self, task_cfg: Mapping[str, Any], split: str, seed: int):
        super().__init__(task_cfg, split, seed)
        cfg = self.task_cfg
        self.tokenizer = make_tokenizer(cfg)
        self.seq_len = seq_len(cfg)
        self.window = default_window(cfg)
        self.eval_difficulties = tuple(cfg["eval_k"])
        self.answer_choices = cfg["num_node_symbols"]   # an answer is one node name
        tok = self.tokenizer
        self._pad, self._arrow, self._comma = tok.id("<pad>"), tok.id("->"), tok.id(",")
        self._hops, self._after, self._colon = tok.id("hops"), tok.id("after"), tok.id(":")
        self._first_hop = tok.id("<1>")        # hop token of k is _first_hop + k - 1
        self._first_node = tok.id("n0")        # token of node symbol j is _first_node + j

    def _draw(self, rng: np.random.Generator, split: str) -> tuple[bytes, np.ndarray]:
        cfg = self.task_cfg
        n = int(rng.integers(cfg["min_nodes"], cfg["max_nodes"] + 1))
        cycle = rng.choice(cfg["num_node_symbols"], size=n, replace=False)   # in cycle order
        # The graph's identity is its successor map, independent of how the edges are written.
        successor = np.full(cfg["num_node_symbols"], -1, np.int16)
        successor[cycle[:-1]] = cycle[1:]
        successor[cycle[-1]] = cycle[0]
        return b"depo:" + successor.tobytes(), cycle

    def _complete(self, cycle: np.ndarray, identity: bytes, rng: np.random.Generator,
                  split: str) -> Example:
        cfg = self.task_cfg
        n, num_queries = cycle.shape[0], cfg["num_queries"]
        order = rng.permutation(n)                 # the order in which edges are written
        edges = np.empty((n, EDGE_TOKENS), np.int32)
        edges[:, 0] = self._first_node + cycle[order]
        edges[:, 1] = self._arrow
        edges[:, 2] = self._first_node + cycle[(order + 1) % n]
        edges[:, 3] = self._comma
        padding = np.full(cfg["context_tokens"] - EDGE_TOKENS * n, self._pad, np.int32)

        if split == "train":
            hops = rng.integers(cfg["k_min"], cfg["k_max"] + 1, size=num_queries)
        else:
            hops = rng.choice(np.asarray(cfg["eval_k"]), size=num_queries)
        starts = rng.integers(0, n, size=num_queries)          # positions on the cycle
        queries = np.empty((num_queries, QUERY_TOKENS), np.int32)
        queries[:, 0] = self._first_hop + hops - 1
        queries[:, 1] = self._hops
        queries[:, 2] = self._after
        queries[:, 3] = self._first_node + cycle[starts]
        queries[:, 4] = self._colon
        queries[:, 5] = self._first_node + cycle[(starts + hops) % n]

        tokens = np.concatenate([padding, edges.reshape(-1), queries.reshape(-1)])
        answers = tuple((cfg["context_tokens"] + QUERY_TOKENS * q + QUERY_TOKENS - 1, 1,
                         int(hops[q])) for q in range(num_queries))
        return Example(tokens=tokens, answers=answers, identity=identity)


SOURCE = DepoSource
