"""Real signals to real CLI processes: ``kill -9`` then resume keeps TensorBoard equal to the
log; Ctrl-C stops a sweep with one line and exit 130, its checkpoint complete.

The subprocesses and this process share one persistent compilation cache (set through JAX's
environment variables), so the config compiles once.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from sleepjax.sweep import point_name
from sleepjax.training.trainer import train_and_evaluate

from support.training import (REPO, enable_compilation_cache, tensorboard_records, tiny_config,
                               write_tiny_config_file)

# One worker runs the module (its runs share one compilation cache).
pytestmark = pytest.mark.xdist_group("test_signals")

# Long enough that a signal sent once checkpoint 5 is on disk arrives well before the end.
RUN = {"train__steps": 40, "train__checkpoint_every": 5, "train__eval_every": 5}
TRAIN_TAGS = ("train/loss", "train/grad_norm", "train/token_accuracy", "lr/muon", "lr/adamw",
              "train/tokens_per_second", "train/tokens_seen")


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("jax_cache"))
    undo = enable_compilation_cache(directory)
    yield {**os.environ, "JAX_COMPILATION_CACHE_DIR": directory,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    undo()


def _start(module: str, config_file: str, workdir: str, env, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, f"--config={config_file}",
                             f"--workdir={workdir}", *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _logged_steps(workdir: str) -> int:
    path = os.path.join(workdir, "train_log.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for line in f if line.endswith("\n"))


def _wait_for_step(workdir: str, step: int, proc: subprocess.Popen, timeout: float = 400) -> None:
    """Until ``step`` is in the run's log and checkpoint 5 is on disk."""
    deadline = time.monotonic() + timeout
    while not (_logged_steps(workdir) >= step
               and os.path.isdir(os.path.join(workdir, "checkpoints", "5"))):
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before step {step}:\n" + proc.stderr.read()[-3000:])
        assert time.monotonic() < deadline, f"step {step} not reached"
        time.sleep(0.05)


def _eval_history(workdir) -> list[dict]:
    with open(os.path.join(workdir, "eval.json")) as f:
        return json.load(f)["history"]


def test_kill_9_then_resume_keeps_tensorboard_equal_to_the_log(cache_env, tmp_path):
    config_file = write_tiny_config_file(tmp_path / "experiment.py", **RUN)
    workdir = str(tmp_path / "run")
    proc = _start("sleepjax.train", config_file, workdir, cache_env)
    # Past checkpoint 5, with TensorBoard events of steps 6..8 written or buffered.
    _wait_for_step(workdir, 8, proc)
    proc.kill()
    proc.communicate()

    result = train_and_evaluate(tiny_config(**RUN), workdir)
    assert result["start_step"] >= 5 and result["final_eval"]["step"] == 40
    with open(os.path.join(workdir, "train_log.jsonl")) as f:
        logged = [json.loads(line)["step"] for line in f]
    assert logged == list(range(1, 41))
    history = _eval_history(workdir)
    assert [h["step"] for h in history] == list(range(5, 41, 5))
    expected = [(tag, step) for step in logged for tag in TRAIN_TAGS]
    expected += [(f"eval/accuracy_{k}", h["step"]) for h in history for k in h["accuracy"]]
    expected += [("eval/loss", h["step"]) for h in history]
    records = tensorboard_records(os.path.join(workdir, "tensorboard"))
    assert collections.Counter(records) == collections.Counter(expected)


def test_ctrl_c_stops_a_sweep_cleanly_with_one_line(cache_env, tmp_path):
    config_file = write_tiny_config_file(tmp_path / "experiment.py", **RUN)
    sweep_dir = str(tmp_path / "sweep")
    proc = _start("sleepjax.sweep", config_file, sweep_dir, cache_env, "--passes=1")
    # One point: N = 1 with the config's own seed (no get_seeds() in the written config file).
    run_dir = os.path.join(sweep_dir, point_name({"sleep.passes": 1}, tiny_config(**RUN).train.seed))
    _wait_for_step(run_dir, 6, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=400)

    assert proc.returncode == 130, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    stopped = re.fullmatch(r"interrupted: SIGINT received: stopped after step (\d+); checkpoint "
                           r"step (\d+) is complete in .*; rerun the same command to resume", last)
    assert stopped and stopped[1] == stopped[2], last
    assert "Traceback" not in stderr and not re.search(r"^I\d{4} ", stderr, re.M), stderr[-3000:]
    step = int(stopped[1])
    assert 5 <= step < 40
    assert os.path.exists(os.path.join(run_dir, "checkpoints", str(step), "checksums.json"))
    assert [h["step"] for h in _eval_history(run_dir)] == list(range(5, step + 1, 5))
