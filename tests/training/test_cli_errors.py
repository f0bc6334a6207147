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
