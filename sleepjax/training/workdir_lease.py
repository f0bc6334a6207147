"""One running job per bucket workdir: numbered lease objects, created exclusively, renewed.

An object store has no ``flock`` and nothing is released when a holder dies. A run therefore
holds ``<workdir>/workdir.lease.<n>`` (the highest ``n`` present), an object naming it (token,
pid, host) and the time of its last renewal, rewritten every ``lease_s / 4`` seconds by a
daemon thread:

* no lease, or the highest one released (the run ended) -> create lease ``n + 1``;
* the highest lease renewed within ``lease_s`` -> refuse: another run is live;
* the highest lease not renewed for ``lease_s`` (its holder was killed) -> take over by
  creating lease ``n + 1``.

Creation is exclusive (an upload with the precondition "no such object", see
:func:`sleepjax.training.paths.create_exclusively`), so of two runs starting or taking over at
once exactly one gets ``n + 1``; the other is refused. The rule this relies on: clocks of the
hosts agree to well within ``lease_s`` (each compares its own clock with the renewal time a
holder wrote). ``lease_s`` comes from ``$SLEEPJAX_WORKDIR_LEASE_S`` (default 120 s): a run
restarted after a kill waits at most that long before it can take the workdir over.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import uuid

from etils import epath

from sleepjax.training import paths

LEASE_PREFIX = "workdir.lease."
ENV_LEASE_S = "SLEEPJAX_WORKDIR_LEASE_S"
DEFAULT_LEASE_S = 120.0
_NUMBER = re.compile(r"^workdir\.lease\.(\d+)$")

_log = logging.getLogger(__name__)


def lease_seconds(environ=None) -> float:
    """``$SLEEPJAX_WORKDIR_LEASE_S`` (a positive number of seconds), else the default."""
    value = (os.environ if environ is None else environ).get(ENV_LEASE_S)
    if value is None:
        return DEFAULT_LEASE_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{ENV_LEASE_S}: must be a positive number of seconds, got {value!r}")
    return seconds


class WorkdirLease:
    """Holds the newest lease of a bucket workdir; see the module docstring.

    ``busy_error(message)`` builds the exception raised when another live run holds it.
    """

    def __init__(self, workdir: epath.Path, busy_error, lease_s: float | None = None):
        self.workdir = workdir
        self.lease_s = lease_seconds() if lease_s is None else float(lease_s)
        self._busy_error = busy_error
        self._token = uuid.uuid4().hex
        self._path: epath.Path | None = None
        self._record: dict = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _leases(self) -> dict[int, epath.Path]:
        found = {}
        if self.workdir.exists():
            for child in self.workdir.iterdir():
                match = _NUMBER.match(child.name)
                if match:
                    found[int(match.group(1))] = child
        return found

    def acquire(self) -> None:
        leases = self._leases()
        newest = max(leases, default=0)
        if newest:
            holder = _read(leases[newest])
            age = time.time() - float(holder.get("renewed", 0.0))
            if not holder.get("released") and age < self.lease_s:
                raise self._busy_error(self.workdir, _describe(holder, age, self.lease_s))
            if not holder.get("released"):
                _log.warning("workdir %s: taking over the lease of %s, not renewed for %.0f s "
                             "(the run holding it is presumed dead)", self.workdir,
                             _describe(holder, age, self.lease_s), age)
        now = time.time()
        self._record = {"token": self._token, "pid": os.getpid(), "host": socket.gethostname(),
                        "started": now, "renewed": now, "released": False}
        path = self.workdir / f"{LEASE_PREFIX}{newest + 1}"
        if not paths.create_exclusively(path, json.dumps(self._record)):
            holder = _read(path)
            raise self._busy_error(self.workdir, _describe(holder, 0.0, self.lease_s))
        self._path = path
        for number, old in leases.items():      # superseded leases are history only
            if number < newest:
                old.unlink(missing_ok=True)
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_until_stopped, daemon=True,
                                        name="workdir-lease")
        self._thread.start()

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                self._write(renewed=time.time())
            except Exception as error:   # a transient store error: the next renewal retries
                _log.warning("workdir %s: could not renew the lease (%s)", self.workdir, error)

    def _write(self, **changes) -> None:
        current = _read(self._path)
        if current.get("token") not in (None, self._token):
            _log.error("workdir %s: lease %s now names another run (%s)", self.workdir,
                       self._path.name, _describe(current, 0.0, self.lease_s))
            return
        self._record.update(changes)
        self._path.write_text(json.dumps(self._record))

    def release(self) -> None:
        if self._path is None:
            return
        self._stop.set()
        self._thread.join()
        self._write(released=True, renewed=time.time())
        self._path = None


def _read(path: epath.Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):    # vanished, or written by something else
        return {}
    return record if isinstance(record, dict) else {}


def _describe(holder: dict, age: float, lease_s: float) -> str:
    if not holder:
        return "holder not recorded"
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(holder.get("started", 0))))
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {started}, lease renewed "
            f"{age:.0f} s ago; a lease not renewed for {lease_s:.0f} s is taken over")
