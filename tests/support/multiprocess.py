"""Launch ``python -m sleepjax.train`` as a real multi-process JAX job on localhost (CPU, fake
devices, gloo collectives), or as one process with the same number of devices."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from support.training import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Job:
    """``processes`` CLI processes with ``devices`` CPU devices each; stderr to files."""

    def __init__(self, tmp_path, name: str, processes: int, devices: int, config_file: str,
                 workdir: str, env: dict, *extra: str):
        self.stderr_paths = [tmp_path / f"{name}_{i}.stderr" for i in range(processes)]
        port = free_port()
        self.procs = []
        for i, path in enumerate(self.stderr_paths):
            process_env = {**env, "JAX_PLATFORMS": "cpu",
                           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
            if processes > 1:
                process_env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                   SLEEPJAX_NUM_PROCESSES=str(processes),
                                   SLEEPJAX_PROCESS_ID=str(i))
            with open(path, "w") as err:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "sleepjax.train", f"--config={config_file}",
                     f"--workdir={workdir}", *extra], cwd=REPO, env=process_env,
                    stdout=subprocess.DEVNULL, stderr=err))

    def stderr(self, i: int) -> str:
        return self.stderr_paths[i].read_text()

    def last_line(self, i: int) -> str:
        lines = [l for l in self.stderr(i).splitlines() if l.strip()]
        return lines[-1] if lines else ""

    def wait(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for proc in self.procs:
            codes.append(proc.wait(timeout=max(deadline - time.monotonic(), 1)))
        return codes

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def logged_losses(workdir) -> dict[int, float]:
    path = os.path.join(workdir, "train_log.jsonl")
    if not os.path.exists(path):
        return {}
    records = [json.loads(line) for line in open(path) if line.endswith("\n")]
    return {r["step"]: r["loss"] for r in records}


def eval_history(workdir) -> list[dict]:
    with open(os.path.join(workdir, "eval.json")) as f:
        return json.load(f)["history"]
