"""Where a task's answers fall relative to the windows that sleep (Algorithm 1's chunk roles).

The model sleeps after every full window that more tokens follow (``sleepjax.models``): with
``T`` inputs and window ``L``, windows ``0 .. (T - 1) // L - 1`` sleep and the rest of the
sequence is the final, non-sleeping prediction chunk. Algorithm 1 gives a window that holds
answers one pass only, so every loss position must lie in that final chunk. A layout that puts
an answer into a sleeping window (or cuts a query at the boundary) silently changes the method;
:func:`check_answers_in_prediction_window` rejects it before anything is compiled.
"""

from __future__ import annotations

import numpy as np


def sleeping_windows(seq_len: int, window: int) -> int:
    """How many full windows of ``window`` tokens sleep in a sequence of ``seq_len`` inputs."""
    if seq_len < 1 or window < 1:
        raise ValueError(f"seq_len and window must be positive (got {seq_len}, {window})")
    return (seq_len - 1) // window


def prediction_chunk_start(seq_len: int, window: int) -> int:
    """Input index where the final, non-sleeping window starts."""
    return sleeping_windows(seq_len, window) * window


def first_loss_position(source, num_records: int = 16) -> int:
    """The smallest input position carrying loss over the first ``num_records`` records."""
    first = None
    for index in range(min(num_records, len(source))):
        positions = np.flatnonzero(np.asarray(source[index]["loss_mask"]) > 0)
        if positions.size and (first is None or positions[0] < first):
            first = int(positions[0])
    if first is None:
        raise ValueError(f"{source!r}: no loss position in its first {num_records} records")
    return first


def check_answers_in_prediction_window(source, window: int, num_records: int = 16) -> None:
    """Raise ``ValueError`` naming ``sleep.window`` if an answer lies in a window that sleeps.

    Checks the first ``num_records`` records of ``source`` (the task layouts are fixed or
    padded to fixed positions, so a few records show where answers can fall), or all of them
    through ``source.earliest_loss_position()`` where a source has it (published rows, whose
    answers vary in length).
    """
    start = prediction_chunk_start(int(source.seq_len), window)
    if hasattr(source, "earliest_loss_position"):
        first = int(source.earliest_loss_position())
    else:
        first = first_loss_position(source, num_records)
    if first < start:
        raise ValueError(
            f"sleep.window: with L={window} and T={source.seq_len} the windows before input "
            f"{start} sleep, but an answer is predicted at input {first}; Algorithm 1 gives "
            f"answer windows one pass, so every answer must lie in the final window (choose L "
            f"so that the context fills whole windows and the queries fit in the last one)")
