"""Every variant of every experiment file puts its answers in the final, non-sleeping window.

Algorithm 1 gives a window that holds answers one pass; the model sleeps after every full
window that more tokens follow. A layout with an answer (or part of a query) before the last
window boundary silently changes the method, so each config is checked on real records.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from sleepjax import data
from sleepjax.data.layout import check_window_layout, prediction_chunk_start, sleeping_windows
from sleepjax.training.config import validate_config
from sleepjax.training.experiment_files import load_config_module

from support.training import REPO

# Recipes that need local files (a checkpoint, published rows: their REQUIRED_PATHS) are
# validated on sources made for them by their own test (tests/training/test_gsm_retrofit.py).
EXPERIMENTS = sorted(path for path in glob.glob(os.path.join(REPO, "experiments", "*.py"))
                     if not hasattr(load_config_module(path), "REQUIRED_PATHS"))
CASES = [(path, variant) for path in EXPERIMENTS
         for variant in load_config_module(path).VARIANTS]


def test_every_experiment_file_is_checked():
    assert {os.path.basename(p) for p in EXPERIMENTS} >= {"rule110.py", "depo.py", "gsm.py"}
    assert len(CASES) >= 9


@pytest.mark.parametrize("path,variant", CASES,
                         ids=[f"{os.path.basename(p)}:{v}" for p, v in CASES])
def test_no_loss_position_in_a_sleeping_window(path, variant):
    cfg = load_config_module(path).get_config(variant)
    rc = validate_config(cfg, num_devices=1)
    source = data.make_source(rc.task, "test", 0)
    start = prediction_chunk_start(rc.seq_len, rc.sleep.window)
    assert sleeping_windows(rc.seq_len, rc.sleep.window) >= 1, "nothing is ever evicted"
    for index in range(8):
        record = source[index]
        positions = np.flatnonzero(record["loss_mask"])
        assert positions.size and positions.min() >= start, (index, positions, start)
        # The whole query (its tokens from the first answer's query start on) is in that window
        # too: the first answer is predicted from a token of the final window.
        assert record["answer_id"][:start].max(initial=-1) == -1


def test_a_layout_with_answers_in_a_sleeping_window_is_rejected():
    # The old Depo tiny layout: 48 context tokens in windows of 16, 4 queries across 2 windows.
    task = data.task_config("depo", min_nodes=5, max_nodes=12, num_node_symbols=16,
                            context_tokens=48, num_queries=4, k_min=1, k_max=4, eval_k=(1, 2, 4),
                            window=16, num_test=16)
    source = data.make_source(task, "test", 0)
    with pytest.raises(ValueError, match=r"sleep.window: with L=16 and T=71 record 0 has answers "
                                         r"from input 5\d \(window 3\) to input 70 \(window 4\)"):
        check_window_layout(source, 16)
    check_window_layout(source, 24)   # 48 = 2 x 24, queries in [48, 71)
