"""Graceful stop on Ctrl-C (SIGINT) or SIGTERM: finish the current step, save, then stop.

A ``KeyboardInterrupt`` raised at an arbitrary point can land inside XLA, orbax's asynchronous
save or grain's threads (an interrupted sweep ended in a segfault, exit 139). Instead, the
training loop runs inside :class:`StopRequests`: the first signal only records the request, and
the loop checks it between steps. A second signal raises ``KeyboardInterrupt`` at once, for a
user who does not want to wait for the save.
"""

from __future__ import annotations

import signal
import threading

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """The run stopped on a signal between two steps; its checkpoints are complete."""


class StopRequests:
    """Context manager installing the handlers; ``requested`` names the signal once one came.

    Off the main thread (where Python cannot install handlers) it installs nothing and
    ``requested`` stays None.
    """

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in _SIGNALS}
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False
