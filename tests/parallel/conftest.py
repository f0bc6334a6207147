"""Multi-device tests (marker ``multidevice``) run on 8 fake CPU devices, in their own process.

XLA reads ``--xla_force_host_platform_device_count`` once, when JAX starts its CPU backend, and
the rest of the suite must keep one device. So:

* a session that collected only ``multidevice`` tests (``pytest -m multidevice``, or the
  child process below) sets ``XLA_FLAGS`` here, after collection and before any test starts
  the backend, and runs them in-process;
* any other session (the whole suite, with or without pytest-xdist, whose workers may have
  started the backend already) runs each ``multidevice`` test as ``python -m pytest <node id>``
  in a child process with the flag set, and reports the child's outcome and output as the
  test's own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

DEVICE_COUNT = 8
# Backend optimisation level 0 halves CPU compile time; it changes LLVM code generation only,
# not the SPMD partitioning or the collectives these tests look at.
MULTIDEVICE_XLA_FLAGS = (f"--xla_force_host_platform_device_count={DEVICE_COUNT}"
                         " --xla_backend_optimization_level=0")
CHILD_TIMEOUT_S = 1500
_CHILD_ENV = "SLEEPJAX_MULTIDEVICE_CHILD"   # set in the child: it never spawns another


def _with_multidevice_flags(xla_flags: str) -> str:
    return f"{xla_flags} {MULTIDEVICE_XLA_FLAGS}".strip()


def _is_multidevice(item) -> bool:
    return item.get_closest_marker("multidevice") is not None


@pytest.hookimpl(trylast=True)   # after -m / -k deselection
def pytest_collection_modifyitems(config, items):
    if items and all(_is_multidevice(item) for item in items):
        # Nothing has started JAX's backend yet (collection only imports), so the flag applies.
        os.environ["XLA_FLAGS"] = _with_multidevice_flags(os.environ.get("XLA_FLAGS", ""))


def _has_enough_devices() -> bool:
    import jax
    return jax.device_count() >= DEVICE_COUNT


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    if not _is_multidevice(item) or os.environ.get(_CHILD_ENV) or _has_enough_devices():
        return None                 # ordinary test, or this process is the one to run it
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for report in _run_in_child(item):
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _run_in_child(item) -> list[pytest.TestReport]:
    env = dict(os.environ, XLA_FLAGS=_with_multidevice_flags(os.environ.get("XLA_FLAGS", "")),
               JAX_PLATFORMS="cpu", **{_CHILD_ENV: "1"})
    command = [sys.executable, "-m", "pytest", item.nodeid, "-q", "--tb=short", "-p", "no:cacheprovider"]
    started = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=item.config.rootpath, env=env, capture_output=True,
                              text=True, timeout=CHILD_TIMEOUT_S)
        outcome = "passed" if proc.returncode == 0 else "failed"
        output = f"{proc.stdout}\n{proc.stderr}"
    except subprocess.TimeoutExpired as exc:
        outcome, output = "failed", f"timed out after {CHILD_TIMEOUT_S} s:\n{exc.stdout or ''}"
    duration = time.perf_counter() - started
    longrepr = None if outcome == "passed" else (
        f"{' '.join(command)} (8 fake CPU devices) failed:\n{output[-12000:]}")

    def report(when, result, text, seconds):
        return pytest.TestReport(item.nodeid, item.location, dict.fromkeys(item.keywords, 1),
                                 result, text, when, sections=[], duration=seconds)

    return [report("setup", "passed", None, 0.0), report("call", outcome, longrepr, duration),
            report("teardown", "passed", None, 0.0)]
