"""Random-access procedural data sources and the record layout shared by all tasks.

Record contract (every task): a dict of numpy arrays, all of length T = ``source.seq_len``:

* ``inputs``     int32[T]   tokens[:-1] of the generated sequence of T + 1 tokens;
* ``targets``    int32[T]   tokens[1:] (next-token targets);
* ``loss_mask``  float32[T] 1.0 exactly at the target positions that hold an answer token;
* ``answer_id``  int32[T]   index 0..A-1 of the answer a loss position belongs to, -1 elsewhere
                            (an answer may span several tokens, e.g. a multi-digit number);
* ``difficulty`` int32[T]   difficulty (t, k or #ops) of that answer at its positions, -1 elsewhere.

Determinism and splits. Record ``i`` of a split is a pure function of ``(seed, split, i)``: it is
drawn from ``np.random.default_rng([seed, split_id, i, attempt])``, so any index is reachable
without generating the ones before it. Train and test are disjoint by a hash partition of the
example space: each generator names the *identity* of an example (Rule 110: the initial states;
Depo: the graph; GSM: the set of sentences), a fixed keyed hash of it decides which split the
example belongs to, and a draw that lands in the other split's half is rejected (``attempt`` + 1).
The partition does not depend on the seed, so test examples of any seed never occur in the
training data of any seed. Each split thus costs two draws per record on average.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import operator
from typing import Any, Callable, Mapping

import numpy as np

from sleepjax.data import fields as F

SPLITS = ("train", "test")
# A rejection loop that fails this often means the example space is too small to split.
MAX_PARTITION_ATTEMPTS = 256
_PARTITION_KEY = b"sleepjax-split-v1"


def split_of(identity: bytes) -> str:
    """The split ('train' or 'test') an example with this identity belongs to."""
    digest = hashlib.blake2b(identity, digest_size=8, key=_PARTITION_KEY).digest()
    return SPLITS[digest[0] & 1]


@dataclasses.dataclass(frozen=True)
class Example:
    """One generated sequence before it is cut into (inputs, targets).

    Attributes:
      tokens: int32 [T + 1], the whole sequence.
      answers: one ``(first_token_index, num_tokens, difficulty)`` per answer, indices into tokens.
      identity: the bytes the train/test partition is computed on.
    """

    tokens: np.ndarray
    answers: tuple[tuple[int, int, int], ...]
    identity: bytes


def example_to_record(example: Example) -> dict[str, np.ndarray]:
    """Cuts an Example into the next-token record of the module docstring."""
    tokens = np.asarray(example.tokens, dtype=np.int32)
    seq_len = tokens.shape[0] - 1
    spans = np.asarray(example.answers, dtype=np.int64).reshape(-1, 3)
    starts, lengths, levels = spans[:, 0], spans[:, 1], spans[:, 2]
    if spans.shape[0] == 0 or np.any(starts < 1) or np.any(lengths < 1) \
            or np.any(starts + lengths > tokens.shape[0]):
        raise ValueError(f"answers: each span must be non-empty and lie after the first of the "
                         f"{tokens.shape[0]} tokens (got {example.answers})")
    # The answer token at sequence index r is the target of input position r - 1.
    answer_of_position = np.repeat(np.arange(spans.shape[0]), lengths)
    positions = np.repeat(starts - 1 - np.cumsum(lengths) + lengths, lengths) \
        + np.arange(answer_of_position.shape[0])
    if np.unique(positions).shape[0] != positions.shape[0]:
        raise ValueError(f"answers: spans overlap (got {example.answers})")
    loss_mask = np.zeros(seq_len, np.float32)
    answer_id = np.full(seq_len, -1, np.int32)
    difficulty = np.full(seq_len, -1, np.int32)
    loss_mask[positions] = 1.0
    answer_id[positions] = answer_of_position
    difficulty[positions] = levels[answer_of_position]
    return {
        "inputs": tokens[:-1].copy(),
        "targets": tokens[1:].copy(),
        "loss_mask": loss_mask,
        "answer_id": answer_id,
        "difficulty": difficulty,
    }


def _check_split_and_seed(split: Any, seed: Any) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: must be one of {SPLITS} (got {split!r})")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: must be an int >= 0 (got {seed!r})")


def validated_task_config(source, task_cfg: Mapping[str, Any], split: Any, seed: Any) -> dict:
    """``task_cfg`` checked for ``source``'s task (its fields and cross-field check), with
    ``split`` and ``seed``; raises ValueError naming the key."""
    _check_split_and_seed(split, seed)
    values = dict(task_cfg.items())
    if values.get("name") != source.task_name:
        raise ValueError(f"task.name: {type(source).__name__} makes {source.task_name!r} "
                         f"records (got {values.get('name')!r})")
    return F.validate_fields(source.task_name, source.fields, source.check_config, values)


class ProceduralSource(abc.ABC):
    """Base class of the task sources: a grain ``RandomAccessDataSource`` of generated records.

    Subclasses name their config (``task_name``, ``fields``, ``check_config``: validated here, so
    a source built directly is checked like one from ``make_source``), set the task attributes
    (``tokenizer``, ``seq_len``, ``window``,
    ``difficulty_name``, ``eval_difficulties``) in ``__init__`` and implement ``_draw`` (the part
    of an example that decides its split, so rejected draws stay cheap) and ``_complete``. The
    source is picklable (grain worker processes).
    """

    task_name: str            # the task.name this source generates
    fields: Mapping[str, F.Field]             # the task config's fields (its module's FIELDS)
    check_config: Callable[[dict], None]      # the task's cross-field check
    tokenizer: Any
    seq_len: int
    window: int
    difficulty_name: str
    eval_difficulties: tuple[int, ...]

    def __init__(self, task_cfg: Mapping[str, Any], split: str, seed: int):
        self.task_cfg = validated_task_config(self, task_cfg, split, seed)
        self.split = split
        self.seed = int(seed)
        self._split_id = SPLITS.index(split)
        self._length = int(self.task_cfg["num_train" if split == "train" else "num_test"])

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def __len__(self) -> int:
        return self._length

    def example(self, index: int) -> Example:
        """The Example behind record ``index`` (for display and tests)."""
        i = operator.index(index)
        if i < 0:
            i += self._length
        if not 0 <= i < self._length:
            raise IndexError(f"index {index} out of range for a {self.split} source of "
                             f"{self._length} records")
        for attempt in range(MAX_PARTITION_ATTEMPTS):
            rng = np.random.default_rng([self.seed, self._split_id, i, attempt])
            identity, draft = self._draw(rng, self.split)
            if split_of(identity) == self.split:
                return self._complete(draft, identity, rng, self.split)
        raise RuntimeError(f"{type(self).__name__}: no {self.split} example found for index {i} "
                           f"in {MAX_PARTITION_ATTEMPTS} draws; the configured example space is "
                           f"too small to be split into train and test")

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return example_to_record(self.example(index))

    @abc.abstractmethod
    def _draw(self, rng: np.random.Generator, split: str) -> tuple[bytes, Any]:
        """Draws the part of an example that decides its split: ``(identity, draft)``."""

    @abc.abstractmethod
    def _complete(self, draft: Any, identity: bytes, rng: np.random.Generator,
                  split: str) -> Example:
        """Finishes an accepted draft (continuing the same ``rng``) into an Example."""

    def __repr__(self) -> str:
        # grain uses repr to fingerprint a source in checkpoints: make it name everything that
        # changes the records.
        fields = ", ".join(f"{k}={v!r}" for k, v in sorted(self.task_cfg.items()))
        return f"{type(self).__name__}(split={self.split!r}, seed={self.seed}, {fields})"
