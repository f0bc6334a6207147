"""Reliability of a training run: busy workdirs, interrupts, damaged checkpoints, wall time,
schedule changes. In-process runs share one config and the module's compilation cache."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from sleepjax.training import trainer
from sleepjax.training.logging import read_eval_history
from sleepjax.training.checkpointing import (CheckpointDamagedError, Checkpointer,
                                             ScheduleChangeError, load_params)
from sleepjax.training.interrupts import TrainingInterrupted
from sleepjax.training.trainer import train_and_evaluate
from sleepjax.training.workdir_lock import WorkdirBusyError, WorkdirLock

from support.training import REPO, tiny_config

# One worker runs the module (the finished run its tests copy trains once).
pytestmark = pytest.mark.xdist_group("test_reliability")

RUN = {"train__steps": 8, "train__checkpoint_every": 4, "train__eval_every": 4}


class _Killed(Exception):
    """Stands in for the process being killed."""


@pytest.fixture(scope="module")
def finished_run(compilation_cache_dir, tmp_path_factory):
    """``(workdir, result)`` of a straight 8-step run (checkpoints 4 and 8, evaluations 4, 8)."""
    workdir = str(tmp_path_factory.mktemp("finished") / "run")
    return workdir, train_and_evaluate(tiny_config(**RUN), workdir)


def _copy_of(finished_run, tmp_path) -> str:
    workdir = str(tmp_path / "run")
    shutil.copytree(finished_run[0], workdir)
    return workdir


def _eval_steps(workdir) -> list[int]:
    with open(os.path.join(workdir, "eval.json")) as f:
        return [h["step"] for h in json.load(f)["history"]]


def test_a_busy_workdir_is_refused_at_once_naming_the_holder(tmp_path):
    workdir = str(tmp_path / "run")
    with WorkdirLock(workdir):
        with pytest.raises(WorkdirBusyError, match=rf"in use by another run \(pid {os.getpid()} on "):
            train_and_evaluate(tiny_config(**RUN), workdir)
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))

    # A holder killed with SIGKILL leaves its lock file behind, but not the lock.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from sleepjax.training.workdir_lock import WorkdirLock\n"
         "lock = WorkdirLock(sys.argv[1]); lock.acquire(); print('locked', flush=True); time.sleep(600)",
         workdir], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirBusyError, match=rf"pid {holder.pid} on "):
            WorkdirLock(workdir).acquire()
    finally:
        holder.kill()
        holder.wait()
    with WorkdirLock(workdir):
        pass


def test_evaluations_survive_interrupts_and_wall_time_adds_up(compilation_cache_dir, finished_run,
                                                              tmp_path, monkeypatch):
    cfg = tiny_config(**RUN)
    # Killed while evaluating step 4 (a checkpoint step): no evaluation may be skipped on resume.
    workdir = str(tmp_path / "killed_in_eval")
    real_evaluate = trainer.evaluation.evaluate
    calls = []

    def killed_in_first_evaluation(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise _Killed
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(trainer.evaluation, "evaluate", killed_in_first_evaluation)
    with pytest.raises(_Killed):
        train_and_evaluate(cfg, workdir)
    monkeypatch.setattr(trainer.evaluation, "evaluate", real_evaluate)
    train_and_evaluate(cfg, workdir)
    assert _eval_steps(workdir) == [4, 8]

    # A real SIGINT during step 4 (an evaluation and checkpoint step): the run finishes that
    # step's evaluation and checkpoint, then stops; the resumed run evaluates everything.
    workdir = str(tmp_path / "sigint")

    def sigint_at_four(step, metrics):
        if step == 4:
            signal.raise_signal(signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)   # the default, or SIG_IGN in a background job
    with pytest.raises(TrainingInterrupted, match="SIGINT received: stopped after step 4"):
        train_and_evaluate(cfg, workdir, step_callback=sigint_at_four)
    assert signal.getsignal(signal.SIGINT) is before   # the process's own handler restored
    resumed = train_and_evaluate(cfg, workdir)
    assert resumed["start_step"] == 4 and _eval_steps(workdir) == [4, 8]
    np.testing.assert_allclose([l for _, l in resumed["losses"]],
                               [l for _, l in finished_run[1]["losses"][4:]], rtol=1e-6, atol=1e-7)
    # The total wall time includes the interrupted part; a finished rerun keeps it (not ~0).
    assert resumed["total_wall_time_s"] > resumed["wall_time_s"] + 0.01
    rerun = train_and_evaluate(cfg, workdir)
    assert rerun["steps_run"] == 0
    assert resumed["wall_time_s"] < rerun["total_wall_time_s"] <= resumed["total_wall_time_s"]


def _flip_bytes(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2)
        chunk = f.read(8)
        f.seek(size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))


def test_damaged_latest_checkpoint_is_named_and_the_previous_one_used(finished_run, tmp_path,
                                                                      caplog):
    workdir = _copy_of(finished_run, tmp_path)
    state_dir = os.path.join(workdir, "checkpoints", "8", "state")
    array_file = max((os.path.join(root, name) for root, _, names in os.walk(state_dir)
                      for name in names if os.path.basename(root) == "d"), key=os.path.getsize)
    _flip_bytes(array_file)

    with pytest.raises(CheckpointDamagedError,
                       match=rf"checkpoint step 8 is damaged: .*{os.path.basename(array_file)}"):
        load_params(workdir, 8)                      # the exact step asked for: refused
    with caplog.at_level(logging.WARNING):
        assert load_params(workdir).step == 4       # the default: the previous intact one
    assert f"checkpoint step 8 is damaged: {array_file}" in caplog.text

    # Training resumes from step 4, moves step 8 aside and trains it again, identically.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        resumed = train_and_evaluate(tiny_config(**RUN), workdir)
    assert "checkpoint step 8 is damaged" in caplog.text
    assert resumed["start_step"] == 4 and [s for s, _ in resumed["losses"]] == [5, 6, 7, 8]
    np.testing.assert_allclose([l for _, l in resumed["losses"]],
                               [l for _, l in finished_run[1]["losses"][4:]], rtol=1e-6, atol=1e-7)
    assert os.listdir(os.path.join(workdir, "damaged_checkpoints")) == ["8"]
    assert load_params(workdir).step == 8 and _eval_steps(workdir) == [4, 8]


@pytest.mark.parametrize("relative", ["state/_METADATA", "config/metadata",
                                      "data/process_0-of-1.json"])
def test_truncated_metadata_names_the_file(finished_run, tmp_path, relative):
    workdir = _copy_of(finished_run, tmp_path)
    for step, with_checksums in ((8, True), (4, False)):
        step_dir = os.path.join(workdir, "checkpoints", str(step))
        if not with_checksums:   # as a run killed before writing them leaves a checkpoint
            os.remove(os.path.join(step_dir, "checksums.json"))
        path = os.path.join(step_dir, relative)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        reason = "SHA-256 differs" if with_checksums else "not valid JSON"
        with pytest.raises(CheckpointDamagedError,
                           match=rf"checkpoint step {step} is damaged: .*{relative}: {reason}"):
            load_params(workdir, step)


def test_schedule_change_on_resume_needs_consent(finished_run, tmp_path, caplog):
    workdir = _copy_of(finished_run, tmp_path)
    longer = tiny_config(**{**RUN, "train__steps": 10})
    with pytest.raises(ScheduleChangeError, match=r"train.steps: 8 -> 10 changes the "
                                                  r"learning-rate schedule.*allow_schedule_change"):
        train_and_evaluate(longer, workdir)
    with caplog.at_level(logging.WARNING):
        result = train_and_evaluate(longer, workdir, allow_schedule_change=True)
    assert "changed learning-rate schedule" in caplog.text and "train.steps: 8 -> 10" in caplog.text
    assert result["start_step"] == 8 and [s for s, _ in result["losses"]] == [9, 10]
    with Checkpointer(os.path.join(workdir, "checkpoints"), keep=2, async_save=False) as ck:
        assert ck.all_steps() == [8, 10] and ck.verify(10)


def test_truncated_eval_history_names_the_file(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text('{"difficulty_name": "t", "history": [{"step": 4, ')
    with pytest.raises(ValueError, match=rf"{path}: not valid JSON"):
        read_eval_history(str(tmp_path), 8)
