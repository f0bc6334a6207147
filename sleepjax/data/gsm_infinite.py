"""GSM-Infinite as published (paper §5.3, §6.3-6.5): records from the released rows.

Used by the ``gsm`` task when ``task.gsm_infinite_files`` names files (else our own generator,
:mod:`sleepjax.data.gsm`). Each row becomes one record of the shared contract
(:mod:`sleepjax.data.source`) laid out as the paper does: the question FIRST, so the model knows
what to store while it reads; then the problem text; then an answer prompt and the answer. The
solution's chain of thought is dropped: the answer must come out of the one prediction pass::

    Question: <question>\\n\\n<problem>\\n\\nAnswer: <answer><pad>..

Only the answer's tokens carry loss; their difficulty is the row's ``op``.

Windows start at the first real token: the record begins at input 0 and is right-padded to
``task.seq_len + 1`` tokens, so windows of ``task.window`` (L) tokens cut the problem itself.
The question and the first part of the context fill the windows that sleep; the window holding
the answer (the prediction window) holds the rest of the context and the answer; padding only
follows the answer, so no loss position and no prediction can see it (its windows come after
the prediction window: :mod:`sleepjax.data.layout`). With ``P`` prompt tokens, hard eviction
leaves ``(P - 1) // L * L`` of them out of attention when the answer is predicted.

Length policy: every row is used whole or skipped, never truncated (cutting the front would
drop the question, cutting the back the answer), and skipped rows are counted by reason in
``source.skipped`` and logged:

* ``ops``: #ops outside the configured range (train: ``min_ops..max_ops``, test: ``eval_ops``,
  as for the generator and the paper's protocol);
* ``too_long``: prompt and answer need more than ``seq_len + 1`` tokens;
* ``too_short``: the prompt is too short for its question to lie in a window before the
  answer's (nothing of the problem would be evicted: not the paper's task);
* ``answer_split``: the answer would straddle a window boundary, so its window would sleep
  before its last tokens are predicted.

A split left empty is an error naming the key to change.

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
The question (with the blank line after it), the rest of the prompt and the answer are encoded
separately, so the question's end is exact; each cut follows whitespace, where byte-level BPE
pre-tokenizers cut as well.
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
from sleepjax.data.layout import RecordSpans
from sleepjax.data.source import Example, example_to_record, split_of, validated_task_config
from sleepjax.data.text_tokenizers import FittedWordTokenizer, PretrainedTokenizer, tokenizer_file

logger = logging.getLogger(__name__)

# The record's three separately encoded segments: question (first), problem, answer.
QUESTION = "Question: {question}\n\n"
CONTEXT = "{problem}\n\nAnswer:"
ANSWER = " {answer}"
# The task-config keys this module reads (errors name them).
TRAIN_KEY, TEST_KEY = "gsm_infinite_files", "gsm_infinite_test_files"
TOKENIZER_KEY = "tokenizer_path"
_ORDER_KEY = b"sleepjax-gsm-infinite-order-v1"
SKIP_REASONS = ("ops", "too_long", "too_short", "answer_split")


def segment_texts(row: rows_io.Row) -> tuple[str, str, str]:
    """The question, context and answer texts of a row's record, in order."""
    return (QUESTION.format(question=row.question), CONTEXT.format(problem=row.problem),
            ANSWER.format(answer=row.answer))


def check_files(cfg: Mapping[str, Any]) -> None:
    """Every path names files and the tokenizer exists (the rows are read by the source, which
    config validation builds before any compute)."""
    for key in (TRAIN_KEY, TEST_KEY):
        rows_io.expand_paths(key, cfg[key])
    if cfg[TOKENIZER_KEY]:
        tokenizer_file(TOKENIZER_KEY, cfg[TOKENIZER_KEY])
    F.require(cfg["seq_len"] >= 2, "seq_len", "must be >= 2", cfg["seq_len"])


def layout_problem(question: int, prompt: int, answer: int, seq_len: int, window: int
                   ) -> str | None:
    """Why a record of ``question`` <= ``prompt`` prompt tokens and ``answer`` answer tokens
    cannot be laid out from input 0 in ``seq_len`` inputs cut into windows of ``window`` (a
    reason of :data:`SKIP_REASONS`), or None if it can."""
    if prompt + answer > seq_len + 1:
        return "too_long"
    first_loss, last_loss = prompt - 1, prompt + answer - 2
    if question > first_loss // window * window:
        return "too_short"
    if last_loss // window != first_loss // window:
        return "answer_split"
    return None


@dataclasses.dataclass(frozen=True)
class _Split:
    """The tokenized records of one split, in record order."""

    sequences: tuple[np.ndarray, ...]    # question + context + answer ids, unpadded
    question_lengths: np.ndarray         # int64 [n]
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
        tokenizer = FittedWordTokenizer(text for row in train + test
                                        for text in segment_texts(row))
    return train, test, tokenizer


def _order(identity: bytes) -> bytes:
    return hashlib.blake2b(identity, digest_size=8, key=_ORDER_KEY).digest()


def _empty_split_error(split: str, total: int, skipped: dict[str, int], seq_len: int,
                       window: int, longest: int) -> ValueError:
    if skipped["too_long"] == total - skipped["ops"]:
        return ValueError(f"task.seq_len: none of the {total - skipped['ops']} {split} rows fits "
                          f"in seq_len + 1 = {seq_len + 1} tokens (the longest needs {longest}); "
                          f"raise seq_len")
    return ValueError(f"task.window: none of the {split} rows can be laid out in windows of "
                      f"L={window} (skipped: {skipped}); 'too_short' rows are too short for their "
                      f"question to lie in a window before the answer's: lower window")


@functools.lru_cache(maxsize=8)
def _prepare(stamps: tuple, split: str, op_range: tuple[int, ...], seq_len: int, window: int,
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
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    skipped["ops"] = total - len(rows)
    if not rows:
        raise ValueError(f"task.{ops_key}: none of the {total} {split} rows has #ops in "
                         f"{sorted(op_range)} (their ops: {sorted({r.op for r in candidates})})")

    texts = [segment_texts(row) for row in rows]
    questions, contexts, answers = (tokenizer.encode_texts([t[k] for t in texts])
                                    for k in range(3))
    kept, longest = [], 0
    for row, question, context, answer in zip(rows, questions, contexts, answers):
        if answer.size == 0:
            raise ValueError(f"task.{TOKENIZER_KEY}: {row.where}: the answer {row.answer!r} "
                             f"encodes to no token")
        prompt = question.size + context.size
        longest = max(longest, prompt + answer.size)
        reason = layout_problem(question.size, prompt, answer.size, seq_len, window)
        if reason:        # skipped and counted, never truncated
            skipped[reason] += 1
            continue
        kept.append((_order(row.identity), len(kept), row,
                     np.concatenate([question, context, answer]), question.size, answer.size))
    if not kept:
        raise _empty_split_error(split, total, skipped, seq_len, window, longest)
    kept.sort(key=lambda item: item[:2])
    kept = kept[:limit]
    if any(skipped.values()):
        logger.warning("GSM-Infinite %s split: %d of %d rows used; skipped %s (ops: outside %s; "
                       "too_long: over seq_len + 1 = %d tokens, longest %d; too_short: question "
                       "not before the answer's window of L = %d; answer_split: answer across a "
                       "window boundary)", split, len(kept), total, skipped, sorted(op_range),
                       seq_len + 1, longest, window)
    return _Split(sequences=tuple(item[3] for item in kept),
                  question_lengths=np.asarray([item[4] for item in kept], np.int64),
                  answer_lengths=np.asarray([item[5] for item in kept], np.int64),
                  ops=np.asarray([item[2].op for item in kept], np.int64),
                  identities=tuple(item[2].identity for item in kept), skipped=skipped)


class GsmInfiniteSource:
    """Random-access source of records from published GSM-Infinite rows (module docstring).

    Has the attributes of the procedural sources (``tokenizer``, ``seq_len``, ``window``,
    ``difficulty_name``, ``eval_difficulties``, ``vocab_size``), is picklable, and adds
    ``skipped`` (rows left out, by reason) and :meth:`record_spans`. Like
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
        self._data = _prepare(stamps, split, op_range, self.seq_len, self.window, limit)
        self.skipped = dict(self._data.skipped)
        self.eval_difficulties = tuple(sorted(set(self._data.ops.tolist())))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def __len__(self) -> int:
        return len(self._data.sequences)

    def record_spans(self) -> RecordSpans:
        """Every record's loss span and question end (:mod:`sleepjax.data.layout` checks them
        against the model's window)."""
        lengths = np.asarray([sequence.size for sequence in self._data.sequences], np.int64)
        return RecordSpans(first_loss=lengths - self._data.answer_lengths - 1,
                           last_loss=lengths - 2, question_end=self._data.question_lengths.copy())

    def example(self, index: int) -> Example:
        i = operator.index(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {index} out of range for a {self.split} source of "
                             f"{len(self)} records")
        sequence = self._data.sequences[i]
        tokens = np.full(self.seq_len + 1, self.tokenizer.pad_id, np.int32)
        tokens[:sequence.size] = sequence      # right padding: windows start at the question
        length = int(self._data.answer_lengths[i])
        return Example(tokens=tokens, answers=((sequence.size - length, length,
                                                int(self._data.ops[i])),),
                       identity=self._data.identities[i])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return example_to_record(self.example(index))

    def __repr__(self) -> str:
        # grain fingerprints a source by repr: name everything that changes the records.
        fields = ", ".join(f"{k}={v!r}" for k, v in sorted(self.task_cfg.items()))
        return f"{type(self).__name__}(split={self.split!r}, records={len(self)}, {fields})"
