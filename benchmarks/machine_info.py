"""What machine a benchmark ran on, printed at the top of every benchmark's output."""

from __future__ import annotations

import os
import platform

import jax


def machine_description() -> str:
    """Host name, core count, CPU model, and the JAX version, backend and device kinds."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return (f"{platform.node()}: nproc={os.cpu_count()}, {cpu}; jax {jax.__version__} on "
            f"{jax.default_backend()} ({devices})")
