"""One running job per workdir: an exclusive ``fcntl.flock`` on ``<workdir>/workdir.lock``.

The operating system releases a ``flock`` when its holder's file descriptor closes, including
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

LOCK_FILE = "workdir.lock"


class WorkdirBusyError(RuntimeError):
    """Another live process holds the workdir's lock."""


class WorkdirLock:
    """Context manager holding ``<workdir>/workdir.lock`` exclusively; refuses at once if busy.

    Args:
      workdir: the run directory (created).
      enabled: take the lock at all; in a multi-host job only the primary process does (every
        process works in the same workdir, so the others must not compete for it).
    """

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._enabled = enabled
        self._file = None

    def acquire(self) -> None:
        if not self._enabled:
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
            raise WorkdirBusyError(
                f"workdir {os.path.dirname(self.path)} is in use by another run "
                f"({_describe_holder(holder)}); wait for it to finish or use another --workdir"
            ) from None
        lock_file.seek(0)
        lock_file.truncate()
        json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                   "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                       timespec="seconds")}, lock_file)
        lock_file.flush()
        self._file = lock_file

    def release(self) -> None:
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
