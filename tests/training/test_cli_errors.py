"""The CLIs' own argument errors are one ``error:`` line naming the flag (not a bare errno, not
the whole usage text), and nothing is written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from support.training import REPO, RULE110


@pytest.mark.slow
@pytest.mark.parametrize("module", ["sleepjax.train", "sleepjax.sweep"])
def test_workdir_and_positional_errors_are_one_line(module, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    for args, expected in (
            (["--workdir="], "error: --workdir: must name a directory (a local path or "
                             "gs://bucket/dir), got ''"),
            ([f"--workdir={a_file}"], f"error: --workdir: {a_file} is a file, not a directory"),
            ([f"--workdir={a_file}/run"], f"error: --workdir: cannot create {a_file}/run: Not a "
                                          "directory"),
            (["--workdir=s3://bucket/run"], "error: --workdir: 's3://bucket/run': s3:// is not "
                                            "supported"),
            ([f"--workdir={tmp_path}/run", "extra"], "error: unexpected positional argument(s) "
                                                     "['extra']")):
        proc = subprocess.run([sys.executable, "-m", module, f"--config={RULE110}:tiny",
                               *(["--passes=1"] if module == "sleepjax.sweep" else []), *args], cwd=REPO, capture_output=True, text=True, timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
        assert lines[0].startswith(expected), lines
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("flag, texts, kwargs, message", [
    ("seeds", ["1", "x"], dict(convert=int), "--seeds: expected comma-separated ints (got 'x')"),
    ("seeds", ["-1"], dict(convert=int), "--seeds: every value must be >= 0 (got '-1')"),
    ("passes", ["0"], dict(convert=int, minimum=1), "--passes: every value must be >= 1 (got '0')"),
    ("settings", ["1", "1"], dict(convert=int), "--settings: values repeat (got [1, 1])"),
    ("eval_adaptive_tols", ["0.1", "inf"], dict(convert=float, strictly=True, noun="tolerance"),
     "--eval_adaptive_tols: every tolerance must be a finite number > 0 (got 'inf')"),
    ("eval_adaptive_tols", ["0"], dict(convert=float, strictly=True, noun="tolerance"),
     "--eval_adaptive_tols: every tolerance must be a finite number > 0 (got '0')"),
])
def test_list_flags_are_one_line_naming_the_flag(flag, texts, kwargs, message):
    from sleepjax.training.cli import parse_list_flag

    with pytest.raises(ValueError) as error:
        parse_list_flag(flag, texts, **kwargs)
    assert str(error.value) == message


def test_lr_grid_rates_are_positive_distinct_and_at_least_two():
    from sleepjax.training.lr_grid import parse_rates

    assert parse_rates(["2e-2", "5e-3", "1e-2"]) == [5e-3, 1e-2, 2e-2]
    for texts, message in ((["1e-2", "nan"], "every rate must be a finite number > 0 (got 'nan')"),
                           (["1e-2", "1e-2"], "rates repeat (got [0.01, 0.01])"),
                           (["1e-2"], "a grid needs at least 2 rates (got [0.01])"),
                           (["1e-2", "fast"], "expected comma-separated numbers (got 'fast')")):
        with pytest.raises(ValueError) as error:
            parse_rates(texts)
        assert str(error.value) == f"--lr_grid: {message}"
