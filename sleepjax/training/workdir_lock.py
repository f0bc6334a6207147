"""One running job per workdir: an exclusive ``fcntl.flock`` on ``<workdir>/workdir.lock``, or
on a bucket workdir (``gs://``) a renewed lease object (:mod:`~sleepjax.training.workdir_lease`).

Locally, the operating system releases a ``flock`` when its holder's file descriptor closes, including
when the process crashes or is killed, so a stale lock file never blocks a later run. The file
itself is left in place (deleting a lock file races with a process that just opened it); its
content names the current or last holder (pid, host, start time) for the refusal message.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket

from sleepjax.training import paths
from sleepjax.training.workdir_lease import WorkdirLease

LOCK_FILE = "workdir.lock"


class WorkdirBusyError(RuntimeError):
    """Another live process holds the workdir's lock."""


def _busy(workdir, holder: str) -> WorkdirBusyError:
    return WorkdirBusyError(f"workdir {workdir} is in use by another run ({holder}); wait for it "
                            "to finish or use another --workdir")


class WorkdirLock:
    """Context manager holding the workdir exclusively; refuses at once if busy.

    Args:
      workdir: the run directory (created), local or ``gs://``.
      enabled: take the lock at all; in a multi-host job only the primary process does (every
        process works in the same workdir, so the others must not compete for it).
    """

    def __init__(self, workdir, *, enabled: bool = True):
        self._lease = None if paths.is_local(workdir) else WorkdirLease(
            paths.as_path(workdir), _busy)
        self.path = os.path.join(os.fspath(workdir), LOCK_FILE)
        self._enabled = enabled
        self._file = None

    def acquire(self) -> None:
        if not self._enabled:
            return
        if self._lease is not None:
            self._lease.acquire()
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        # "a+" opens without truncating: the holder's description must survive our failed try.
        lock_file = open(self.path, "a+")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            lock_file.seek(0)
            holder = lock_file.read().strip()
            lock_file.close()
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise _busy(os.path.dirname(self.path), _describe_holder(holder)) from None
        lock_file.seek(0)
        lock_file.truncate()
        json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                   "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                       timespec="seconds")}, lock_file)
        lock_file.flush()
        self._file = lock_file

    def release(self) -> None:
        if self._lease is not None and self._enabled:
            self._lease.release()
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False


def _describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):   # the holder is between truncate and write
        return "holder not yet recorded"
