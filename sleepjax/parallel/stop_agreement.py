"""Stop requests agreed across the processes of a multi-host job.

A signal reaches each host on its own (a preempted pod slice sends SIGTERM to its hosts at
slightly different times). If one process stopped at its own step, it would save and exit
while the others waited in the next step's collectives forever. So before every step each
process contributes its request (the signal number, or 0) to an all-gather, and all of them
act on the same answer: the first request found, in process order. Every process then stops
after the same step and saves the same checkpoint.

A process that dies cannot take part; the others learn of it from JAX's distributed runtime
(its heartbeats stop), which ends them with an error after ``heartbeat_timeout_seconds``
(:func:`sleepjax.parallel.multihost.initialize_distributed`, ``$SLEEPJAX_HEARTBEAT_TIMEOUT_S``).
"""

from __future__ import annotations

import signal

import jax
import numpy as np


def agreed_stop(requested: str | None) -> str | None:
    """The stop request every process acts on: this process's ``requested`` (a signal name
    such as ``"SIGTERM"``, or None) in a single-process job; otherwise the first request of any
    process, the same on all of them. Every process must call it at the same point."""
    if jax.process_count() == 1:
        return requested
    from jax.experimental import multihost_utils

    code = int(signal.Signals[requested]) if requested else 0
    codes = np.asarray(multihost_utils.process_allgather(np.int32(code))).reshape(-1)
    first = next((int(c) for c in codes if c), 0)
    return signal.Signals(first).name if first else None
