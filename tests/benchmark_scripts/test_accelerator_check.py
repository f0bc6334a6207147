"""benchmarks/accelerator_check.py: its dry run (every section on the CPU at toy sizes, the
Pallas GPU kernels in interpret mode) passes end to end, and the parent's bookkeeping reports
failures instead of hiding them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import accelerator_check  # noqa: E402
from accelerator_report import render_report  # noqa: E402

SCRIPT = os.path.join(ROOT, "benchmarks", "accelerator_check.py")


@pytest.mark.slow
def test_dry_run_runs_every_section(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, SCRIPT, str(tmp_path), "--dry-run"], capture_output=True,
                            text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    data = json.loads((tmp_path / "accelerator_check.json").read_text())
    assert [(u["unit"], u["status"]) for u in data["units"]] == [
        ("kernels", "ok"), ("speed", "ok"), ("train N=4", "ok"), ("memory N=1", "ok"), ("wake", "ok")]
    res = data["results"]
    kernels = [entry for shape in res["kernels"]["cases"].values() for entry in shape.values()]
    assert len(kernels) == 2 and all(entry["passed"] for entry in kernels), kernels
    for modes in res["speed"]["times"].values():
        for mode in ("fwd", "fwd+bwd"):
            for side in ("sleepjax chunked", "sleepjax pallas"):
                assert modes[mode][side]["ms"] > 0, (mode, side, modes[mode])
    train = res["train"]["cases"]["N=4"]
    assert train["tokens_per_s"] > 0 and 0 < train["mfu"]["float32"] and train["tokens_per_step"] == 4 * 100
    memory = res["memory"]["cases"]["N=1"]
    assert memory["tokens_per_s"] > 0 and memory["xla_temp_bytes"] > 0
    assert set(res["wake"]["latency_ms"]) == {"sleep model", "full attention"}
    report = (tmp_path / "accelerator_check.md").read_text()
    assert report in result.stdout
    for heading in ("## 1. Kernels", "## 2. Op speed", "## 3. Training", "## 4. Memory", "## 5. Wake"):
        assert heading in report


def test_unit_past_its_budget_is_stopped_and_reported(tmp_path):
    status, seconds, _ = accelerator_check.spawn("wake", "", True, str(tmp_path / "unit.json"), timeout=0.5)
    assert status.startswith("stopped at its time budget") and seconds < 30


def test_report_marks_failures():
    meta = dict(date="today", machine="m", backend="gpu", command="c", wall_s=1.0, budget_s=2.0)
    errors = {name: 1e-3 for name in ("o", "final_state", "dq", "dk", "dv", "dg", "dbeta", "dinitial_state",
                                      "o_forward_only", "final_state_forward_only")}
    kernels = {"cases": {"B=1 T=8": {
        "pallas (GPU kernels)": {"errors": dict(errors, dg=0.5), "tolerance": [1e-2, 1.5e-2], "finite": True,
                                 "passed": False, "seconds": 1.0},
        "xla chunked": {"error": "XlaRuntimeError: RESOURCE_EXHAUSTED: out of memory", "passed": False}}}}
    runs = [{"unit": "kernels", "status": "ok", "seconds": 1.0, "tail": []},
            {"unit": "train N=1", "status": "failed (exit status 1)", "seconds": 1.0, "tail": ["Traceback"]}]
    report, ok = render_report(meta, runs, {"kernels": kernels})
    assert not ok
    assert "**FAIL**" in report and "RESOURCE_EXHAUSTED" in report and "Traceback" in report
    passing = {"cases": {"B=1 T=8": {"xla chunked": {"errors": errors, "tolerance": [1e-2, 1.5e-2],
                                                      "finite": True, "passed": True, "seconds": 1.0}}}}
    assert render_report(meta, runs[:1], {"kernels": passing})[1]
