"""A checkpoint that could not be written stops the run at once, in one line.

Orbax writes a checkpoint in background threads and, when that fails (a full disk, a revoked
bucket permission), logs the traceback from the thread and raises only when the next save
waits for it, so a run would train on without being able to save and then print hundreds of
lines. The trainer checks after every step (``Checkpointer.seal_finished``), so the run stops at
the first step after the write ended. :class:`CheckpointErrorLog` diverts orbax's error records (tracebacks included) from the
terminal into a log file, and :func:`write_error` turns the failure into a
:class:`CheckpointWriteError` whose message is one line: the step, the cause, the workdir, the
last complete checkpoint and where the traceback is.
"""

from __future__ import annotations

import logging
import os
import tempfile
import traceback

from sleepjax.training import paths

LOG_FILE = "checkpoint_errors.log"


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the run stopped (earlier checkpoints are intact)."""


def _root_cause(error: BaseException) -> str:
    """The innermost OSError's ``strerror`` (e.g. "No space left on device"), else the last
    line of the error's message."""
    seen, current, found = set(), error, None
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            found = current.strerror
        current = current.__cause__ or current.__context__
    if found:
        return found
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


class CheckpointErrorLog(logging.Filter):
    """While active, orbax's ERROR records go to ``path`` instead of the terminal.

    ``path`` is ``<workdir>/checkpoint_errors.log`` for a local workdir, else (a bucket, whose
    objects cannot be appended to) a file in the system's temporary directory.
    """

    def __init__(self, workdir):
        super().__init__()
        self.path = (os.path.join(os.fspath(workdir), LOG_FILE) if paths.is_local(workdir) else
                     os.path.join(tempfile.gettempdir(), f"sleepjax-{os.getpid()}-{LOG_FILE}"))
        self._loggers = [logging.getLogger("absl"), logging.getLogger("orbax")]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or "orbax" not in (record.pathname or ""):
            return True
        self.append(logging.Formatter("%(asctime)s %(levelname)s %(pathname)s:%(lineno)d] "
                                      "%(message)s").format(record))
        return False

    def append(self, text: str) -> str:
        """Add ``text`` to the log file; if that cannot be written either (the disk that
        failed the checkpoint), to a temporary file instead. Returns the file written."""
        for path in (self.path, os.path.join(tempfile.gettempdir(),
                                             f"sleepjax-{os.getpid()}-{LOG_FILE}")):
            try:
                with open(path, "a") as f:
                    f.write(text.rstrip("\n") + "\n")
                self.path = path
                return path
            except OSError:
                continue
        return self.path

    def __enter__(self):
        for logger in self._loggers:
            logger.addFilter(self)
        return self

    def __exit__(self, *exc):
        for logger in self._loggers:
            logger.removeFilter(self)
        return False


def write_error(step: int, error: BaseException, directory, last_complete: int | None,
                log: CheckpointErrorLog) -> CheckpointWriteError:
    """The one-line :class:`CheckpointWriteError` for a failed save of ``step``, its traceback
    appended to ``log``'s file."""
    where = log.append(f"checkpoint step {step} could not be written:\n" + "".join(
        traceback.format_exception(type(error), error, error.__traceback__)))
    kept = (f"checkpoint step {last_complete} is the last complete one"
            if last_complete is not None else "no checkpoint was completed")
    return CheckpointWriteError(
        f"checkpoint step {step} could not be written: {_root_cause(error)} (workdir "
        f"{paths.as_path(directory).parent}); {kept}; traceback in {where}")
