"""Where a task's answers and questions fall relative to the windows that sleep (Algorithm 1).

The model sleeps after every full window that more tokens follow (``sleepjax.models``): with
``T`` inputs and window ``L``, windows ``0 .. (T - 1) // L - 1`` sleep and the rest of the
sequence is a final window that does not. A window's logits come from its one wake pass; its
sleep only changes what later windows read. Algorithm 1's chunk roles, per record:

* **prediction window**: the window holding the record's first loss position. Every loss
  position of the record must lie in it: were a later answer token in a later window, the
  prediction window would sleep before that token is predicted, which Algorithm 1 forbids (a
  window with loss gets one pass).
* **consolidation windows**: the windows before it. They hold no loss and sleep (N passes).
* windows after the prediction window hold no loss, so whether they sleep changes no loss and
  no prediction (a right-padded record ends in such windows of padding).

Question-first tasks (GSM-Infinite, paper §5.3) also need the question consolidated: every
question token lies in a consolidation window, so at prediction time it is no longer attendable
(hard eviction) and only reaches the answer through the fast weights.
:func:`check_window_layout` refuses a layout that breaks either rule, naming ``sleep.window``,
before anything is compiled.
"""

from __future__ import annotations

import dataclasses

import numpy as np

EVICTIONS = ("hard", "sliding")


def sleeping_windows(seq_len: int, window: int) -> int:
    """How many full windows of ``window`` tokens sleep in a sequence of ``seq_len`` inputs."""
    if seq_len < 1 or window < 1:
        raise ValueError(f"seq_len and window must be positive (got {seq_len}, {window})")
    return (seq_len - 1) // window


def prediction_chunk_start(seq_len: int, window: int) -> int:
    """Input index where the final, non-sleeping window starts."""
    return sleeping_windows(seq_len, window) * window


@dataclasses.dataclass(frozen=True)
class RecordSpans:
    """Per record (int64 arrays of one length): its first and last loss input position and,
    for question-first tasks, ``question_end``, the input index just past its question (else
    None)."""

    first_loss: np.ndarray
    last_loss: np.ndarray
    question_end: np.ndarray | None = None


def prediction_window_start(first_loss, window: int) -> np.ndarray:
    """Input index where the window holding each record's first loss position starts."""
    return np.asarray(first_loss, np.int64) // window * window


def evicted_fraction(first_loss, window: int, eviction: str) -> np.ndarray:
    """Per record, the fraction of the tokens before its first answer token that attention can
    no longer see when that token is predicted (at input ``first_loss``).

    Assumes the record starts at input 0 (no padding in front). Hard eviction keeps only the
    prediction window's own tokens; sliding eviction keeps the last ``window`` tokens.
    """
    if eviction not in EVICTIONS:
        raise ValueError(f"eviction: must be one of {EVICTIONS} (got {eviction!r})")
    first_loss = np.asarray(first_loss, np.int64)
    before = first_loss + 1                       # inputs 0..first_loss
    if eviction == "hard":
        evicted = prediction_window_start(first_loss, window)
    else:
        evicted = np.maximum(before - window, 0)
    return evicted / before


def record_spans(source, num_records: int = 16) -> RecordSpans:
    """Loss spans of ``source``'s records: all of them through ``source.record_spans()`` where a
    source has it (published rows, whose lengths vary), else the first ``num_records`` (the
    procedural layouts are fixed or padded to fixed positions, so a few records show them)."""
    if hasattr(source, "record_spans"):
        return source.record_spans()
    first, last = [], []
    for index in range(min(num_records, len(source))):
        positions = np.flatnonzero(np.asarray(source[index]["loss_mask"]) > 0)
        if not positions.size:
            raise ValueError(f"{source!r}: record {index} has no loss position")
        first.append(positions[0])
        last.append(positions[-1])
    if not first:
        raise ValueError(f"{source!r}: holds no record")
    return RecordSpans(np.asarray(first, np.int64), np.asarray(last, np.int64))


def check_window_layout(source, window: int, num_records: int = 16) -> None:
    """Raise ``ValueError`` naming ``sleep.window`` if a record of ``source`` breaks the module
    docstring's rules under windows of ``window`` tokens: its answers span several windows, or
    its question is not in a window that sleeps before the answer."""
    spans = record_spans(source, num_records)
    seq_len = int(source.seq_len)
    head = f"sleep.window: with L={window} and T={seq_len}"
    answer_window, last_window = spans.first_loss // window, spans.last_loss // window
    split = np.flatnonzero(answer_window != last_window)
    if split.size:
        i = int(split[0])
        raise ValueError(
            f"{head} record {i} has answers from input {spans.first_loss[i]} (window "
            f"{answer_window[i]}) to input {spans.last_loss[i]} (window {last_window[i]}): window "
            f"{answer_window[i]} would sleep before the later answer tokens are predicted, but "
            f"Algorithm 1 gives answer windows one pass ({split.size} record(s); choose L so that "
            f"each record's answers lie in one window)")
    if spans.question_end is None:
        return
    start = prediction_window_start(spans.first_loss, window)
    open_question = np.flatnonzero(spans.question_end > start)
    if open_question.size:
        i = int(open_question[0])
        raise ValueError(
            f"{head} the question of record {i} ends at input {spans.question_end[i]} but its "
            f"answer window starts at input {start[i]}: the question must lie in a window that "
            f"sleeps before the answer is predicted ({open_question.size} record(s); lay the "
            f"records out with this L, task.window, or lower it)")
