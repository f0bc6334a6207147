"""Training with a per-step N (``sleep.train_passes`` with the curriculum and truncated backprop):
every step logs its N, the sequence is the law's, and a run killed mid-ramp resumes with the
same N sequence and the same losses."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from sleepjax.models.pass_law import parse_train_passes, passes_for_step
from sleepjax.training.trainer import train_and_evaluate

from support.training import tiny_config

STEPS = 8


class _Killed(Exception):
    """Stands in for the process being killed between two steps."""


def _logged_passes(workdir):
    with open(os.path.join(workdir, "train_log.jsonl")) as f:
        return [json.loads(line)["sleep_passes"] for line in f]


@pytest.mark.slow
def test_a_run_killed_mid_ramp_resumes_with_the_same_n_sequence(compilation_cache_dir, tmp_path):
    cfg = tiny_config(train__steps=STEPS, train__checkpoint_every=3, sleep__passes=3,
                      sleep__train_passes="uniform:1:4", sleep__passes_warmup_fraction=0.5,
                      sleep__backprop_passes=2, train__seed=5)
    law = parse_train_passes("uniform:1:4")
    expected = [passes_for_step(law, 3, 0.5, STEPS, 5, step) for step in range(STEPS)]
    assert expected[0] == 1 and len(set(expected)) > 1     # the ramp starts at 1, N varies

    straight_dir = str(tmp_path / "straight")
    straight = train_and_evaluate(cfg, straight_dir)
    assert _logged_passes(straight_dir) == expected

    workdir = str(tmp_path / "killed")

    def kill_after_four(step, metrics):
        assert metrics["sleep_passes"] == expected[step - 1]
        if step == 4:
            raise _Killed

    with pytest.raises(_Killed):
        train_and_evaluate(cfg, workdir, step_callback=kill_after_four)
    resumed = train_and_evaluate(cfg, workdir)
    assert resumed["start_step"] == 3
    assert _logged_passes(workdir) == expected
    np.testing.assert_allclose([l for _, l in resumed["losses"]],
                               [l for _, l in straight["losses"][3:]], rtol=1e-6, atol=1e-7)
    # evaluation runs sleep.passes whatever the training N was: every one of the two
    # sleeping windows (T = 18, L = 8) of every evaluated example slept 3 passes
    assert straight["final_eval"]["sleep_passes"] == {
        "mean": 3.0, "histogram": {"3": 2 * cfg.train.eval_examples}}
