"""Checkpoints: an interrupted run resumes to the same losses; foreign configs and NaNs stop runs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from sleepjax.training.checkpointing import Checkpointer, ConfigMismatchError
from sleepjax.training.trainer import NonFiniteError, train_and_evaluate

from support.training import tiny_config

STEPS = 12


class _Killed(Exception):
    """Stands in for the process being killed between two steps."""


@pytest.mark.slow
def test_resume_outputs_and_refusal(compilation_cache_dir, tmp_path):
    """One test (one compilation): straight run, killed run + resumption, outputs, refusal."""
    cfg = tiny_config(train__steps=STEPS, train__checkpoint_every=6)
    straight_dir = str(tmp_path / "straight")
    straight = train_and_evaluate(cfg, straight_dir)
    assert [s for s, _ in straight["losses"]] == list(range(1, STEPS + 1))

    # --- killed after step 7, rerun with the same "command": resumes from step 6.
    workdir = str(tmp_path / "interrupted")

    def kill_after_seven(step, metrics):
        if step == 7:
            raise _Killed

    with pytest.raises(_Killed):
        train_and_evaluate(cfg, workdir, step_callback=kill_after_seven)
    with Checkpointer(os.path.join(workdir, "checkpoints"), keep=2, async_save=False) as ck:
        assert ck.all_steps() == [6]          # step 7 was never saved
    resumed = train_and_evaluate(cfg, workdir)
    assert resumed["start_step"] == 6
    assert [s for s, _ in resumed["losses"]] == list(range(7, STEPS + 1))
    np.testing.assert_allclose([l for _, l in resumed["losses"]],
                               [l for _, l in straight["losses"][6:]], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(resumed["final_eval"]["accuracy"]["all"],
                               straight["final_eval"]["accuracy"]["all"])
    with open(os.path.join(workdir, "train_log.jsonl")) as f:   # each step once
        assert [json.loads(line)["step"] for line in f] == list(range(1, STEPS + 1))

    # --- what a run leaves in its workdir.
    with open(os.path.join(straight_dir, "eval.json")) as f:
        saved = json.load(f)
    assert saved["difficulty_name"] == "t" and saved["history"][-1]["step"] == STEPS
    assert set(saved["history"][-1]["accuracy"]) == {"1", "all"}
    assert saved["history"][-1]["examples"]["all"] == cfg.train.eval_examples
    with open(os.path.join(straight_dir, "config.json")) as f:
        assert json.load(f)["sleep"]["window"] == 8
    assert any(n.startswith("events") for n in os.listdir(os.path.join(straight_dir, "tensorboard")))
    with Checkpointer(os.path.join(straight_dir, "checkpoints"), keep=2, async_save=False) as ck:
        assert ck.all_steps() == [6, STEPS]

    # --- a different experiment in the same workdir is refused, naming the fields.
    other = tiny_config(train__steps=STEPS, train__checkpoint_every=6, model__d_model=48,
                        sleep__passes=2, train__eval_every=4)   # eval_every may differ
    with pytest.raises(ConfigMismatchError) as info:
        train_and_evaluate(other, straight_dir)
    message = str(info.value)
    assert "model.d_model" in message and "sleep.passes" in message
    assert "train.eval_every" not in message


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(compilation_cache_dir, tmp_path):
    # A huge learning rate makes the second step's loss non-finite.
    cfg = tiny_config(train__steps=STEPS, train__checkpoint_every=1, optim__muon_lr=1e30,
                      optim__adam_lr=1e30, optim__clip_norm=0.0, optim__warmup_fraction=0.0)
    workdir = str(tmp_path / "nan")
    with pytest.raises(NonFiniteError) as info:
        train_and_evaluate(cfg, workdir)
    message = str(info.value)
    assert "non-finite" in message and "Last good checkpoint" in message
    failed_step = int(message.split()[1].rstrip(":"))
    with Checkpointer(os.path.join(workdir, "checkpoints"), keep=2, async_save=False) as ck:
        assert ck.latest_step() == failed_step - 1 >= 1
        assert f"step {ck.latest_step()}" in message

    # Resumed, the same step fails right after the restore: the restored checkpoint is named
    # as suspect, not as the last good one.
    with pytest.raises(NonFiniteError) as again:
        train_and_evaluate(cfg, workdir)
    message = str(again.value)
    assert f"step {failed_step}: non-finite" in message
    assert f"first step after restoring checkpoint step {failed_step - 1}" in message
    assert "Last good checkpoint" not in message
