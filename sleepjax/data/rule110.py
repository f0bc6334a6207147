"""Rule 110 cellular automaton task (paper §5.1).

A record holds ``num_states`` independent random binary states of ``cells`` cells each, then the
labels: label i is the first cell of state i after ``t`` Rule 110 steps. With the default
``query_token=True`` a ``?`` token separates the states from the labels:

    state0 (24) | state1 (24) | state2 (24) | state3 (24) | ? l0 l1 l2 l3      (101 tokens)

so with inputs = tokens[:-1], targets = tokens[1:] (T = 100) the four windows of L = 24 hold the
four states exactly and the fifth window (``? l0 l1 l2``) predicts l0..l3: every loss position sits
in the prediction window (open question 1, option (b); a documented deviation from the paper's
T = 100 layout without separator). With ``query_token=False`` the sequence is the paper's 100
tokens (T = 99) and label 0 is predicted from the last cell of the last state, i.e. inside the
last state's window, which then holds a loss position (option (a)): it is no longer an all-zero
mask consolidation window.

The labels form ONE answer of ``num_states`` tokens (the metric is exact accuracy: all labels
right), with difficulty t. The vocabulary is '0', '1', '?' (ids 0, 1, 2) in both layouts.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from sleepjax.data import fields as F
from sleepjax.data.source import Example, ProceduralSource
from sleepjax.data.tokenizers import Tokenizer

NAME = "rule110"
DIFFICULTY_NAME = "t"

FIELDS = {
    "t": F.Field(32, F.INT, "Rule 110 steps between the states and the labels (paper Fig. 2b: 32)"),
    "num_states": F.Field(4, F.INT, "independent initial states per record"),
    "cells": F.Field(24, F.INT, "cells per state; also the natural window L"),
    "periodic": F.Field(True, F.BOOL, "ring boundary; False = cells outside the state are 0"),
    "query_token": F.Field(True, F.BOOL, "a '?' separator before the labels (open question 1 (b))"),
    "num_train": F.Field(1_000_000_000, F.INT, "records in the train split (generated on demand)"),
    "num_test": F.Field(4096, F.INT, "records in the test split"),
}

# Fewer bits than this give too few distinct examples to hash-partition into two splits.
_MIN_BITS = 16


def check(cfg: Mapping[str, Any]) -> None:
    """Cross-field checks of a type-checked rule110 config (raises ValueError naming the key)."""
    F.require(cfg["t"] >= 0, "t", "must be >= 0 (t = 0 is pure retrieval of the first cell)",
              cfg["t"])
    F.require(cfg["num_states"] >= 1, "num_states", "must be >= 1", cfg["num_states"])
    F.require(cfg["cells"] >= 3, "cells", "must be >= 3 (a cell has a left and a right neighbour)",
              cfg["cells"])
    bits = cfg["num_states"] * cfg["cells"]
    F.require(bits >= _MIN_BITS, "cells", f"num_states * cells must be >= {_MIN_BITS} so that "
              f"train and test can be disjoint (num_states={cfg['num_states']})", cfg["cells"])
    for key in ("num_train", "num_test"):
        F.require(cfg[key] >= 1, key, "must be >= 1", cfg[key])


def seq_len(cfg: Mapping[str, Any]) -> int:
    """T = length of inputs / targets: states + optional '?' + labels, minus one for the shift."""
    return cfg["num_states"] * cfg["cells"] + int(cfg["query_token"]) + cfg["num_states"] - 1


def default_window(cfg: Mapping[str, Any]) -> int:
    return cfg["cells"]


def make_tokenizer() -> Tokenizer:
    return Tokenizer(("0", "1", "?"), char_level=True)


def rule110_run(packed: int, cells: int, num_states: int, steps: int, periodic: bool) -> int:
    """``steps`` Rule 110 updates of ``num_states`` states packed side by side in one int.

    Bit ``f * cells + j`` is cell j of state f. All states are updated at once with bit
    operations; the masks stop neighbours from leaking across the states' borders.
    """
    full = (1 << (cells * num_states)) - 1
    first = sum(1 << (f * cells) for f in range(num_states))   # cell 0 of every state
    last = first << (cells - 1)                                 # the last cell of every state
    not_first, not_last = full & ~first, full & ~last
    state = packed
    for _ in range(steps):
        left = (state << 1) & not_first          # bit j holds cell j - 1
        right = (state >> 1) & not_last          # bit j holds cell j + 1
        if periodic:
            left |= (state >> (cells - 1)) & first
            right |= (state & first) << (cells - 1)
        # Wolfram code 110: new = (c XOR r) OR (c AND NOT l).
        state = ((state ^ right) | (state & ~left)) & full
    return state


class Rule110Source(ProceduralSource):
    """Random-access source of Rule 110 records (see the module docstring for the layout)."""

    task_name = NAME
    fields = FIELDS
    check_config = staticmethod(check)
    difficulty_name = DIFFICULTY_NAME

    def __init__(self, task_cfg: Mapping[str, Any], split: str, seed: int):
        super().__init__(task_cfg, split, seed)
        cfg = self.task_cfg
        self.tokenizer = make_tokenizer()
        self.seq_len = seq_len(cfg)
        self.window = default_window(cfg)
        self.eval_difficulties = (cfg["t"],)
        # An answer is the num_states label bits together: uniform guessing is right 1 in 2^S.
        self.answer_choices = 2 ** cfg["num_states"]
        self._query_id = self.tokenizer.id("?")

    def _draw(self, rng: np.random.Generator, split: str) -> tuple[bytes, np.ndarray]:
        cfg = self.task_cfg
        bits = rng.integers(0, 2, size=(cfg["num_states"], cfg["cells"]), dtype=np.int32)
        identity = (f"rule110:{cfg['num_states']}x{cfg['cells']}:".encode()
                    + np.packbits(bits.reshape(-1)).tobytes())
        return identity, bits

    def _complete(self, bits: np.ndarray, identity: bytes, rng: np.random.Generator,
                  split: str) -> Example:
        cfg = self.task_cfg
        num_states, cells = bits.shape
        packed = int("".join(map(str, bits.reshape(-1)[::-1].tolist())), 2)
        final = rule110_run(packed, cells, num_states, cfg["t"], cfg["periodic"])
        labels = [(final >> (f * cells)) & 1 for f in range(num_states)]   # first cells
        # '0' and '1' have ids 0 and 1, so the bits are their own token ids.
        query = [self._query_id] if cfg["query_token"] else []
        tokens = np.concatenate([bits.reshape(-1), np.asarray(query + labels, np.int32)])
        answer_start = num_states * cells + len(query)
        return Example(tokens=tokens, answers=((answer_start, num_states, cfg["t"]),),
                       identity=identity)


SOURCE = Rule110Source
