"""GSM-Infinite as published (paper §5.3, §6.3-6.5): records from the released rows.

Used by the ``gsm`` task when ``task.gsm_infinite_files`` names files (else our own generator,
:mod:`sleepjax.data.gsm`). Each row becomes one record of the shared contract
(:mod:`sleepjax.data.source`) laid out as the paper does: the question FIRST, so the model knows
what to store while it reads; then the problem text; then an answer prompt and the answer. The
solution's chain of thought is dropped: the answer must come out of the one prediction pass::

    <pad>.. Question: <question>\\n\\n<problem>\\n\\nAnswer: <answer>

Only the answer's tokens carry loss; their difficulty is the row's ``op``. Every sequence is
left-padded to ``task.seq_len + 1`` tokens, so the answer always ends the record and lies in the
final, non-sleeping window whatever the row's length (``task.window`` / ``sleep.window`` L cut
the padded context into windows as for the generator).

Length policy: a row whose prompt and answer need more than ``seq_len + 1`` tokens is SKIPPED,
never truncated (cutting the front would drop the question, cutting the back the answer); the
count is logged and kept in ``source.skipped``, and a split left empty is an error naming
``task.seq_len``. Likewise rows outside the configured #ops (train: ``min_ops..max_ops``, test:
``eval_ops``, as for the generator and the paper's protocol) are skipped and counted.

Splits: with ``task.gsm_infinite_test_files`` the train split is every row of
``gsm_infinite_files`` and the test split every row of the test files; without it, the rows of
``gsm_infinite_files`` are divided by the project's keyed hash of (question, problem)
(:func:`sleepjax.data.source.split_of`), so a problem never lands in both. Records are ordered
by a keyed hash of the same identity (a fixed shuffle: the evaluation's first ``eval_examples``
records mix all #ops even when a file is sorted by op), then capped at ``num_train`` /
``num_test``. Record ``i`` is a pure function of (files, task config, i); the seed only orders
training batches (``make_dataset``).

Tokenizer: ``task.tokenizer_path`` (the checkpoint's tokenizer.json or its directory), else a
word-level vocabulary fitted on the rows of both file lists (for models trained from scratch).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import operator
from typing import Any, Callable, Mapping

import numpy as np

from sleepjax.data import fields as F
from sleepjax.data import gsm_infinite_rows as rows_io
from sleepjax.data.source import Example, example_to_record, split_of, validated_task_config
from sleepjax.data.text_tokenizers import FittedWordTokenizer, PretrainedTokenizer, tokenizer_file

logger = logging.getLogger(__name__)

PROMPT = "Question: {question}\n\n{problem}\n\nAnswer:"
ANSWER = " {answer}"
# The task-config keys this module reads (errors name them).
TRAIN_KEY, TEST_KEY = "gsm_infinite_files", "gsm_infinite_test_files"
TOKENIZER_KEY = "tokenizer_path"
_ORDER_KEY = b"sleepjax-gsm-infinite-order-v1"


def prompt_text(row: rows_io.Row) -> str:
    return PROMPT.format(question=row.question, problem=row.problem)


def check_files(cfg: Mapping[str, Any]) -> None:
    """Every path names files and the tokenizer exists (the rows are read by the source, which
    config validation builds before any compute)."""
    for key in (TRAIN_KEY, TEST_KEY):
        rows_io.expand_paths(key, cfg[key])
    if cfg[TOKENIZER_KEY]:
        tokenizer_file(TOKENIZER_KEY, cfg[TOKENIZER_KEY])
    F.require(cfg["seq_len"] >= 2, "seq_len", "must be >= 2", cfg["seq_len"])


@dataclasses.dataclass(frozen=True)
class _Split:
    """The tokenized records of one split, in record order."""

    sequences: tuple[np.ndarray, ...]    # prompt + answer ids, unpadded
    answer_lengths: np.ndarray           # int64 [n]
    ops: np.ndarray                      # int64 [n]
    identities: tuple[bytes, ...]
    skipped: dict[str, int]


def _files_and_stamps(cfg: Mapping[str, Any]) -> tuple:
    """The cache key of everything the records are read from (changes when a file changes)."""
    train = rows_io.expand_paths(TRAIN_KEY, cfg[TRAIN_KEY])
    test = rows_io.expand_paths(TEST_KEY, cfg[TEST_KEY])
    tokenizer = (tokenizer_file(TOKENIZER_KEY, cfg[TOKENIZER_KEY]),) if cfg[TOKENIZER_KEY] else ()
    return rows_io.file_stamps(train), rows_io.file_stamps(test), rows_io.file_stamps(tokenizer)


@functools.lru_cache(maxsize=4)
def _load(stamps: tuple) -> tuple[list[rows_io.Row], list[rows_io.Row], Any]:
    """Rows of the train and test file lists, and the tokenizer (cached: config validation and
    the trainer both build the sources)."""
    train_stamps, test_stamps, tokenizer_stamps = stamps
    train = rows_io.read_rows(TRAIN_KEY, tuple(p for p, _, _ in train_stamps))
    test = rows_io.read_rows(TEST_KEY, tuple(p for p, _, _ in test_stamps))
    if tokenizer_stamps:
        tokenizer = PretrainedTokenizer(tokenizer_stamps[0][0], TOKENIZER_KEY)
    else:
        tokenizer = FittedWordTokenizer(text for row in train + test for text in
                                        (prompt_text(row), ANSWER.format(answer=row.answer)))
    return train, test, tokenizer


def _order(identity: bytes) -> bytes:
    return hashlib.blake2b(identity, digest_size=8, key=_ORDER_KEY).digest()


@functools.lru_cache(maxsize=8)
def _prepare(stamps: tuple, split: str, op_range: tuple[int, ...], seq_len: int,
             limit: int) -> _Split:
    train_rows, test_rows, tokenizer = _load(stamps)
    if test_rows:
        candidates = train_rows if split == "train" else test_rows
    else:
        candidates = [row for row in train_rows if split_of(row.identity) == split]
    total = len(candidates)
    if not candidates:
        raise ValueError(f"task.{TRAIN_KEY}: the hash split of its {len(train_rows)} rows leaves "
                         f"the {split} split empty; give more rows or {TEST_KEY}")
    ops_key = "eval_ops" if split == "test" else "min_ops / task.max_ops"
    rows = [row for row in candidates if row.op in op_range]
    skipped = {"ops": len(candidates) - len(rows)}
    if not rows:
        raise ValueError(f"task.{ops_key}: none of the {total} {split} rows has #ops in "
                         f"{sorted(op_range)} (their ops: {sorted({r.op for r in candidates})})")

    prompts = tokenizer.encode_texts([prompt_text(row) for row in rows])
    answers = tokenizer.encode_texts([ANSWER.format(answer=row.answer) for row in rows])
    kept, longest = [], 0
    for row, prompt, answer in zip(rows, prompts, answers):
        if answer.size == 0:
            raise ValueError(f"task.{TOKENIZER_KEY}: {row.where}: the answer {row.answer!r} "
                             f"encodes to no token")
        length = prompt.size + answer.size
        longest = max(longest, length)
        if length <= seq_len + 1:     # longer rows are skipped, never truncated
            kept.append((_order(row.identity), len(kept), row, np.concatenate([prompt, answer]),
                         answer.size))
    skipped["too_long"] = len(rows) - len(kept)
    if not kept:
        raise ValueError(f"task.seq_len: none of the {len(rows)} {split} rows fits in seq_len + 1 "
                         f"= {seq_len + 1} tokens (the longest needs {longest}); raise seq_len")
    kept.sort(key=lambda item: item[:2])
    kept = kept[:limit]
    if any(skipped.values()):
        logger.warning("GSM-Infinite %s split: %d of %d rows used; skipped %d outside #ops %s and "
                       "%d longer than seq_len + 1 = %d tokens (longest %d)", split, len(kept),
                       total, skipped["ops"], sorted(op_range), skipped["too_long"], seq_len + 1,
                       longest)
    return _Split(sequences=tuple(item[3] for item in kept),
                  answer_lengths=np.asarray([item[4] for item in kept], np.int64),
                  ops=np.asarray([item[2].op for item in kept], np.int64),
                  identities=tuple(item[2].identity for item in kept), skipped=skipped)


class GsmInfiniteSource:
    """Random-access source of records from published GSM-Infinite rows (module docstring).

    Has the attributes of the procedural sources (``tokenizer``, ``seq_len``, ``window``,
    ``difficulty_name``, ``eval_difficulties``, ``vocab_size``), is picklable, and adds
    ``skipped`` (rows left out, by reason) and :meth:`earliest_loss_position`. Like
    ``ProceduralSource``, a subclass names its task config (``sleepjax.data.gsm`` does, which
    keeps this module free of an import of the task module).
    """

    task_name: str                            # the task.name these records belong to
    fields: Mapping[str, F.Field]             # that task's config fields
    check_config: Callable[[dict], None]      # that task's cross-field check
    difficulty_name = "ops"

    def __init__(self, task_cfg: Mapping[str, Any], split: str, seed: int):
        cfg = validated_task_config(self, task_cfg, split, seed)
        if not cfg[TRAIN_KEY]:
            raise ValueError(f"task.{TRAIN_KEY}: names no file; {type(self).__name__} reads "
                             f"published rows (leave it empty to use the generator)")
        self.task_cfg, self.split, self.seed = cfg, split, int(seed)
        self.seq_len, self.window = cfg["seq_len"], cfg["window"]
        if split == "train":
            op_range, limit = tuple(range(cfg["min_ops"], cfg["max_ops"] + 1)), cfg["num_train"]
        else:
            op_range, limit = tuple(cfg["eval_ops"]), cfg["num_test"]
        stamps = _files_and_stamps(cfg)
        self.tokenizer = _load(stamps)[2]
        self._data = _prepare(stamps, split, op_range, self.seq_len, limit)
        self.skipped = dict(self._data.skipped)
        self.eval_difficulties = tuple(sorted(set(self._data.ops.tolist())))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def __len__(self) -> int:
        return len(self._data.sequences)

    def earliest_loss_position(self) -> int:
        """The smallest input position holding an answer token over ALL records (the answers
        end every record, so it is set by the longest answer); see sleepjax.data.layout."""
        return self.seq_len - int(self._data.answer_lengths.max())

    def example(self, index: int) -> Example:
        i = operator.index(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {index} out of range for a {self.split} source of "
                             f"{len(self)} records")
        sequence = self._data.sequences[i]
        tokens = np.full(self.seq_len + 1, self.tokenizer.pad_id, np.int32)
        tokens[tokens.size - sequence.size:] = sequence     # left padding: the answer ends it
        length = int(self._data.answer_lengths[i])
        return Example(tokens=tokens, answers=((tokens.size - length, length,
                                                int(self._data.ops[i])),),
                       identity=self._data.identities[i])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return example_to_record(self.example(index))

    def __repr__(self) -> str:
        # grain fingerprints a source by repr: name everything that changes the records.
        fields = ", ".join(f"{k}={v!r}" for k, v in sorted(self.task_cfg.items()))
        return f"{type(self).__name__}(split={self.split!r}, records={len(self)}, {fields})"
