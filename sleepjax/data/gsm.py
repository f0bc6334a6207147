"""GSM-Infinite-style math word problems (paper §5.3), our own small procedural generator.

Not the GSM-Infinite data: a scaled-down generator in its spirit, with a word-level vocabulary.
A problem is a dependency graph of quantities "the number of <item> <person> has". Leaves are
given numbers; every other quantity is one operation on earlier ones:

    Ann has 7 pens .                                              (leaf)
    Bob has 3 more apples than Ann has pens .                     (add a constant)
    Cara has 2 fewer figs than Bob has apples .                   (subtract a constant)
    Dan has 2 times as many coins as Cara has figs .              (multiply by a constant)
    Eve has as many books as Dan has coins and Ann has pens combined .   (sum of two quantities)

The difficulty is the number of operations needed to compute the queried quantity (the derived
quantities among its ancestors), ops ~ U[min_ops, max_ops] in training and uniform over
``eval_ops`` in the test split. The core is a chain of ``ops`` derived quantities whose sums may
reuse earlier core quantities (a DAG). Distractor sentences about other person / item pairs,
mostly derived from the problem's own quantities so that they look relevant but off the query's
dependency path, fill the sequence up to ``seq_len``; all facts are shuffled. The question comes
FIRST, there is no chain of thought, and the answer (0..max_value) is written as digit tokens
after ``answer :`` at the very end (left padding takes up what the sentences leave):

    <pad>.. question : how many figs does Cara have ? <facts, shuffled> answer : 1 2

The answer's digits form one answer (one ``answer_id``) whose positions carry the difficulty.

With ``gsm_infinite_files`` set, the task reads the published GSM-Infinite rows instead
(:mod:`sleepjax.data.gsm_infinite`: the same order of question, facts and answer, but rows of
varying length, right-padded so that windows start at the question); the generator stays the
default.
"""

from __future__ import annotations

import random
from typing import Any, Mapping

import numpy as np

from sleepjax.data import fields as F
from sleepjax.data import gsm_infinite, gsm_infinite_rows
from sleepjax.data.source import Example, ProceduralSource
from sleepjax.data.tokenizers import Tokenizer

NAME = "gsm"
DIFFICULTY_NAME = "ops"

PERSONS = ("Ann", "Bob", "Cara", "Dan", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jon", "Kim", "Leo",
           "Mia", "Ned", "Ora", "Pat", "Quinn", "Rex", "Sue", "Tom")
ITEMS = ("apples", "pears", "plums", "figs", "lemons", "limes", "melons", "peaches", "pens",
         "pencils", "books", "cards", "coins", "shells", "stamps", "marbles")
WORDS = ("has", "more", "fewer", "than", "times", "as", "many", "and", "combined", "how", "does",
         "have", "question", "answer", ".", "?", ":")
DIGITS = tuple(str(d) for d in range(10))

MAX_LEAF = 20          # leaves are given numbers in [1, min(MAX_LEAF, max_value)]
MAX_CONSTANT = 9       # constants of "more" / "fewer" / "times" are single digits
DISTRACTOR_LEAF_PROBABILITY = 0.3
SUM_WITH_CORE_PROBABILITY = 0.2     # a core step sums with an earlier core quantity
SUM_WITH_LEAF_PROBABILITY = 0.2     # a core step sums with a new given quantity
SHORTEST_SENTENCE_TOKENS = 5        # a leaf with a one-digit number
QUESTION_TOKENS = 9    # question : how many I does P have ?
ANSWER_MARKER_TOKENS = 2   # answer :
LONGEST_DERIVED_TOKENS = 14   # the sum sentence
LEAF_TOKENS_WITHOUT_NUMBER = 4  # P has <number> I .

FIELDS = {
    "min_ops": F.Field(1, F.INT, "fewest operations in training (paper: 1)"),
    "max_ops": F.Field(8, F.INT, "most operations in training (paper: 8)"),
    "eval_ops": F.Field((2, 4, 6, 8), F.INTS, "operation counts of the test split (paper figures)"),
    "max_value": F.Field(99, F.INT, "every quantity, hence every answer, lies in [0, max_value]"),
    "distractors": F.Field(True, F.BOOL, "fill the sequence with distractor sentences (else pad)"),
    "seq_len": F.Field(320, F.INT, "T, tokens per record (paper: 2000-3300; scaled down for CPU)"),
    "window": F.Field(192, F.INT, "natural attention window L (paper: 2000 of ~2650 tokens)"),
    "num_train": F.Field(1_000_000_000, F.INT, "records in the train split (generated on demand)"),
    "num_test": F.Field(1600, F.INT, "records in the test split (paper: 1600)"),
    "gsm_infinite_files": F.Field("", F.PATHS, "published GSM-Infinite rows (.jsonl / .json / "
                                  ".parquet files, globs or directories); empty: our generator"),
    "gsm_infinite_test_files": F.Field("", F.PATHS, "held-out published rows; empty: a hash "
                                       "split of gsm_infinite_files"),
    "tokenizer_path": F.Field("", F.STR, "tokenizer.json (or its directory) for the published "
                              "rows; empty: a word vocabulary fitted on the files"),
    "gsm_infinite_allow_overlap": F.Field(False, F.BOOL, "accept test files that share a file "
                                          "or a problem with gsm_infinite_files (logged); "
                                          "otherwise refused"),
}


def _num_digits(value: int) -> int:
    return len(str(value))


def min_seq_len(max_ops: int, max_value: int) -> int:
    """The smallest seq_len that fits the longest possible core of ``max_ops`` operations.

    Worst case: every operation is a sum with a new leaf (max_ops + 1 leaves), plus the question
    and the answer. The raw sequence is seq_len + 1 tokens.
    """
    leaf = LEAF_TOKENS_WITHOUT_NUMBER + _num_digits(min(MAX_LEAF, max_value))
    raw = (QUESTION_TOKENS + ANSWER_MARKER_TOKENS + _num_digits(max_value)
           + max_ops * LONGEST_DERIVED_TOKENS + (max_ops + 1) * leaf)
    return raw - 1


def seq_len(cfg: Mapping[str, Any]) -> int:
    return cfg["seq_len"]


def default_window(cfg: Mapping[str, Any]) -> int:
    return cfg["window"]


def check(cfg: Mapping[str, Any]) -> None:
    """Cross-field checks of a type-checked gsm config (raises ValueError naming the key)."""
    F.require(cfg["min_ops"] >= 1, "min_ops", "must be >= 1", cfg["min_ops"])
    F.require(cfg["max_ops"] >= cfg["min_ops"], "max_ops", f"must be >= min_ops={cfg['min_ops']}",
              cfg["max_ops"])
    F.require(cfg["max_ops"] <= 32, "max_ops", "must be <= 32", cfg["max_ops"])
    F.require(all(1 <= ops <= cfg["max_ops"] for ops in cfg["eval_ops"]), "eval_ops",
              f"every value must be in [1, max_ops={cfg['max_ops']}]", cfg["eval_ops"])
    F.require(2 <= cfg["max_value"] <= 999, "max_value", "must be in [2, 999]", cfg["max_value"])
    if cfg["gsm_infinite_files"]:
        gsm_infinite.check_files(cfg)
        if cfg["gsm_infinite_test_files"]:
            gsm_infinite_rows.check_disjoint(
                "gsm_infinite_files", gsm_infinite_rows.expand_paths(
                    "gsm_infinite_files", cfg["gsm_infinite_files"]),
                "gsm_infinite_test_files", gsm_infinite_rows.expand_paths(
                    "gsm_infinite_test_files", cfg["gsm_infinite_test_files"]),
                cfg["gsm_infinite_allow_overlap"], "gsm_infinite_allow_overlap")
    else:
        for key in ("gsm_infinite_test_files", "tokenizer_path", "gsm_infinite_allow_overlap"):
            F.require(not cfg[key], key, "is only used with gsm_infinite_files (set that too)",
                      cfg[key])
        needed = min_seq_len(cfg["max_ops"], cfg["max_value"])
        F.require(cfg["seq_len"] >= needed, "seq_len", f"must be >= {needed} to fit a "
                  f"{cfg['max_ops']}-operation problem", cfg["seq_len"])
    F.require(1 <= cfg["window"] <= cfg["seq_len"], "window",
              f"must be in [1, seq_len={cfg['seq_len']}]", cfg["window"])
    for key in ("num_train", "num_test"):
        F.require(cfg[key] >= 1, key, "must be >= 1", cfg[key])


def make_tokenizer() -> Tokenizer:
    return Tokenizer(("<pad>",) + PERSONS + ITEMS + WORDS + DIGITS, pad_token="<pad>")


class _ProblemBuilder:
    """Builds one problem's sentences (token-id lists) and values; used inside ``_draw``."""

    def __init__(self, source: "GsmSource", rng: random.Random):
        self.w = source.word_ids
        self.rng = rng
        self.max_value = source.task_cfg["max_value"]
        self.slots = list(range(len(PERSONS) * len(ITEMS)))   # free (person, item) pairs
        rng.shuffle(self.slots)
        self.values: list[int] = []       # value of quantity q
        self.names: list[tuple[int, int]] = []   # (person id, item id) of quantity q
        self.slot_of: list[int] = []
        self.sentences: list[list[int]] = []

    def _number(self, value: int) -> list[int]:
        return [self.w[d] for d in str(value)]

    def _new_quantity(self, value: int) -> int:
        slot = self.slots.pop()
        person, item = divmod(slot, len(ITEMS))
        self.names.append((self.w[PERSONS[person]], self.w[ITEMS[item]]))
        self.values.append(value)
        self.slot_of.append(slot)
        return len(self.values) - 1

    def retract(self) -> None:
        """Removes the last quantity and its sentence, freeing its person / item pair."""
        self.sentences.pop()
        self.names.pop()
        self.values.pop()
        self.slots.append(self.slot_of.pop())

    def leaf_sentence(self, q: int) -> list[int]:
        person, item = self.names[q]
        return [person, self.w["has"], *self._number(self.values[q]), item, self.w["."]]

    def add_leaf(self, limit: int | None = None) -> int:
        """A new given quantity with a value in [1, min(MAX_LEAF, limit or max_value)]."""
        top = min(MAX_LEAF, self.max_value if limit is None else limit)
        q = self._new_quantity(self.rng.randint(1, top))
        self.sentences.append(self.leaf_sentence(q))
        return q

    def plan_derived(self, a: int, b: int | None) -> tuple[str, int, int]:
        """Picks an operation on quantity ``a`` (and optionally ``b``) keeping the result in
        [0, max_value]: returns (op, constant, value)."""
        x, top, options = self.values[a], self.max_value, []
        if x < top:
            options.append("add")
        if x >= 1:
            options.append("sub")
        if x >= 1 and 2 * x <= top:
            options.append("mul")
        if b is not None and x + self.values[b] <= top:
            options.append("sum")
        op = self.rng.choice(options)   # never empty: x < top or x >= 1 since top >= 2
        if op == "add":
            c = self.rng.randint(1, min(MAX_CONSTANT, top - x))
            return op, c, x + c
        if op == "sub":
            c = self.rng.randint(1, min(MAX_CONSTANT, x))
            return op, c, x - c
        if op == "mul":
            c = self.rng.randint(2, min(MAX_CONSTANT, top // x))
            return op, c, x * c
        return op, 0, x + self.values[b]

    def add_derived(self, op: str, constant: int, value: int, a: int, b: int | None) -> int:
        q = self._new_quantity(value)
        w, (person, item), (pa, ia) = self.w, self.names[q], self.names[a]
        if op in ("add", "sub"):
            word = w["more"] if op == "add" else w["fewer"]
            tokens = [person, w["has"], *self._number(constant), word, item, w["than"], pa, w["has"],
                      ia, w["."]]
        elif op == "mul":
            tokens = [person, w["has"], *self._number(constant), w["times"], w["as"], w["many"],
                      item, w["as"], pa, w["has"], ia, w["."]]
        else:
            pb, ib = self.names[b]
            tokens = [person, w["has"], w["as"], w["many"], item, w["as"], pa, w["has"], ia,
                      w["and"], pb, w["has"], ib, w["combined"], w["."]]
        self.sentences.append(tokens)
        return q


class GsmSource(ProceduralSource):
    """Random-access source of GSM-style records (see the module docstring for the layout)."""

    task_name = NAME
    fields = FIELDS
    check_config = staticmethod(check)
    difficulty_name = DIFFICULTY_NAME

    def __init__(self, task_cfg: Mapping[str, Any], split: str, seed: int):
        super().__init__(task_cfg, split, seed)
        cfg = self.task_cfg
        if cfg["gsm_infinite_files"]:
            raise ValueError("task.gsm_infinite_files: GsmSource generates problems; build the "
                             "source of published rows with sleepjax.data.make_source")
        self.tokenizer = make_tokenizer()
        self.seq_len = seq_len(cfg)
        self.window = default_window(cfg)
        self.eval_difficulties = tuple(cfg["eval_ops"])
        self.answer_choices = cfg["max_value"] + 1      # an answer is a value in [0, max_value]
        self.word_ids = {token: i for i, token in enumerate(self.tokenizer.tokens)}

    def _draw(self, numpy_rng: np.random.Generator, split: str) -> tuple[bytes, dict[str, Any]]:
        cfg, w = self.task_cfg, self.word_ids
        # Many scalar draws per problem: Python's generator, keyed by the record's numpy stream
        # (so still a pure function of (seed, split, index, attempt)), is several times faster.
        rng = random.Random(int(numpy_rng.integers(2**63)))
        if split == "train":
            ops = rng.randint(cfg["min_ops"], cfg["max_ops"])
        else:
            ops = rng.choice(cfg["eval_ops"])
        problem = _ProblemBuilder(self, rng)
        top = problem.max_value

        # Core: a chain of `ops` derived quantities. A sum takes an earlier core quantity or a new
        # leaf as second operand, so the graph is a DAG and every derived quantity is an ancestor
        # of the query: computing it takes exactly `ops` operations.
        core = [problem.add_leaf()]
        for _ in range(ops):
            previous = core[-1]
            x = problem.values[previous]
            other, kind = None, rng.random()
            if kind < SUM_WITH_CORE_PROBABILITY and len(core) > 1:
                candidate = core[rng.randrange(len(core) - 1)]
                if x + problem.values[candidate] <= top:
                    other = candidate
            elif kind < SUM_WITH_CORE_PROBABILITY + SUM_WITH_LEAF_PROBABILITY and x < top:
                other = problem.add_leaf(limit=top - x)
            if other is None:
                op, constant, value = problem.plan_derived(previous, None)
            else:
                op, constant, value = "sum", 0, x + problem.values[other]
            core.append(problem.add_derived(op, constant, value, previous, other))
        query = core[-1]
        answer = problem.values[query]
        person, item = problem.names[query]
        question = [w["question"], w[":"], w["how"], w["many"], item, w["does"], person, w["have"],
                    w["?"]]
        answer_tokens = [w[d] for d in str(answer)]
        # The problem's identity is its question and core facts, in canonical order: the same
        # reasoning problem never lands in both splits, whatever its distractors and sentence order.
        identity = repr((question, sorted(map(tuple, problem.sentences)))).encode()
        draft = {"problem": problem, "question": question, "answer": answer_tokens, "ops": ops}
        return b"gsm:" + identity, draft

    def _complete(self, draft: dict[str, Any], identity: bytes, numpy_rng: np.random.Generator,
                  split: str) -> Example:
        cfg, w = self.task_cfg, self.word_ids
        problem, question, answer_tokens = draft["problem"], draft["question"], draft["answer"]
        rng = problem.rng    # continues the record's stream

        # Distractors: new quantities, mostly derived from the problem's own (so they look
        # relevant, yet are off the query's path), while they fit and person / item pairs last.
        budget = cfg["seq_len"] + 1 - len(question) - ANSWER_MARKER_TOKENS - len(answer_tokens)
        budget -= sum(len(sentence) for sentence in problem.sentences)
        assert budget >= 0, "check() guarantees that the longest core fits"
        while cfg["distractors"] and problem.slots and budget >= SHORTEST_SENTENCE_TOKENS:
            if rng.random() < DISTRACTOR_LEAF_PROBABILITY:
                problem.add_leaf()
            else:
                a, b = rng.randrange(len(problem.values)), rng.randrange(len(problem.values))
                op, constant, value = problem.plan_derived(a, b if b != a else None)
                problem.add_derived(op, constant, value, a, b if op == "sum" else None)
            if len(problem.sentences[-1]) > budget:   # too long: try a leaf, the shortest kind
                problem.retract()
                problem.add_leaf()
                if len(problem.sentences[-1]) > budget:
                    problem.retract()
                    break
            budget -= len(problem.sentences[-1])

        facts = problem.sentences
        rng.shuffle(facts)
        content = question + [token for sentence in facts for token in sentence]
        content += [w["answer"], w[":"], *answer_tokens]
        padding = self.seq_len + 1 - len(content)
        tokens = np.asarray([w["<pad>"]] * padding + content, np.int32)
        answer_start = tokens.shape[0] - len(answer_tokens)
        return Example(tokens=tokens, answers=((answer_start, len(answer_tokens), draft["ops"]),),
                       identity=identity)


class PublishedGsmSource(gsm_infinite.GsmInfiniteSource):
    """Records of this task from published GSM-Infinite rows (:mod:`sleepjax.data.gsm_infinite`)."""

    task_name = NAME
    fields = FIELDS
    check_config = staticmethod(check)
    difficulty_name = DIFFICULTY_NAME


def make_source(task_cfg: Mapping[str, Any], split: str, seed: int):
    """Our generator, or the published GSM-Infinite rows when ``gsm_infinite_files`` is set."""
    if task_cfg.get("gsm_infinite_files"):
        return PublishedGsmSource(task_cfg, split, seed)
    return GsmSource(task_cfg, split, seed)


SOURCE = make_source
