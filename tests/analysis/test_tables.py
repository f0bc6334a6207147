"""experiments/analysis: the ablation summary applies issue 19's goal to the points it is given,
and the answer-loss table reports every point's per-k losses."""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "experiments", "analysis"))

import answer_loss_table  # noqa: E402
import recipe_table  # noqa: E402


def _point(seed, setting, accs, history_accs, loss_by_k=None):
    cross = {str(n): {"accuracy": {"all": a}, "loss": 1.0 + n / 10} for n, a in accs.items()}
    final_acc = accs.get(setting.get("sleep.passes", 4), max(accs.values()))
    return {"seed": seed, "passes": setting.get("sleep.passes", 4), "setting": setting,
            "config": {"sleep.train_passes": setting.get("sleep.train_passes", "fixed")},
            "cross_eval": cross, "wall_time_s": 1.0,
            "history": [{"tokens_seen": 100 * (i + 1), "accuracy": {"all": a}}
                        for i, a in enumerate(history_accs)],
            "final_eval": {"accuracy": {"all": final_acc, "1": final_acc},
                           "loss": 2.0, "loss_by_difficulty": loss_by_k or {"1": 0.5, "all": 2.0}}}


def test_summary_checks_take_off_reference_and_the_fall_over_n():
    fixed = {"sleep.passes": 4}
    rand = {"sleep.passes": 4, "sleep.train_passes": "uniform:1:6"}
    flat = {1: 0.9, 2: 0.95, 4: 0.95, 6: 0.94, 8: 0.93}
    points = [_point(0, fixed, {1: 0.1, 2: 0.2, 4: 0.9, 6: 0.9, 8: 0.8}, [0.1, 0.9]),
              _point(1, fixed, {1: 0.1, 2: 0.2, 4: 0.9, 6: 0.9, 8: 0.9}, [0.1, 0.9]),
              _point(0, rand, flat, [0.1, 0.5]),
              _point(1, rand, flat, [0.1, 0.5])]
    text = recipe_table.summary(points, majority=0.1, margin=0.05, goal_passes=[1, 2, 4, 6, 8],
                                reference="fixed N=4")
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "| 2/2 | 0.900 ± 0.000 | 0.900 ± 0.000 | 0.100 | not met |" in rows["fixed N=4"]
    assert rows["train_passes=uniform:1:6"].endswith("| 0.950 ± 0.000 | 0.010 | met |")
    # the fixed law with other keys is named as fixed, with its N
    ramped = _point(0, {"sleep.passes": 4, "sleep.passes_warmup_fraction": 0.25}, flat, [0.1, 0.9])
    text = recipe_table.summary(points + [ramped], 0.1, 0.05, [1, 2, 4, 6, 8], "fixed N=4")
    assert "| fixed N=4, passes_warmup_fraction=0.25 | 0 | 1/1 |" in text
    # one seed that never leaves the floor fails the goal
    stuck = _point(2, rand, flat, [0.1, 0.12])
    text = recipe_table.summary(points + [stuck], 0.1, 0.05, [1, 2, 4, 6, 8], "fixed N=4")
    assert "| 2/3 |" in text and text.rstrip().endswith("not met |")


def test_answer_loss_table_lists_every_point_with_its_per_k_losses(tmp_path):
    for seed in (0, 1):
        point = _point(seed, {"sleep.passes": 2}, {1: 0.3, 2: 0.4}, [0.1],
                       loss_by_k={"1": 0.25 + seed, "2": 2.5, "all": 1.5})
        os.makedirs(tmp_path / f"p{seed}")
        (tmp_path / f"p{seed}" / "point.json").write_text(json.dumps(point))
    text = answer_loss_table.table(answer_loss_table.rows([str(tmp_path)]))
    lines = text.splitlines()
    assert lines[0].startswith("| setting | seed | loss k=1 | loss k=2 | loss all |")
    assert lines[2].startswith("| N=2 | 0 | 0.250 | 2.500 | 2.000 |")
    assert lines[3].startswith("| N=2 | 1 | 1.250 |") and lines[3].endswith("| 1.100 / 1.200 |")
