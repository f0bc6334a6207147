"""A checkpoint whose background write fails (here: "No space left on device" injected into
orbax's writer for one step) stops the run at the first step after that write ended (not at the
next save) with one line naming the step,
the cause and the workdir; the traceback is in a log file, the previous checkpoint intact, and
the rerun resumes from it exactly."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from orbax.checkpoint import JsonCheckpointHandler

from sleepjax.training.checkpoint_errors import CheckpointWriteError
from sleepjax.training.checkpointing import Checkpointer, load_params
from sleepjax.training.trainer import train_and_evaluate

from support.training import REPO, TESTS, tiny_config

RUN = {"train__steps": 45, "train__checkpoint_every": 15, "train__async_checkpointing": True}
FAILING_STEP = 30
STEP_SECONDS = 0.1   # the in-process run's steps are slowed to this, so the background write
                     # surely ends long before the next save (step 45) would wait for it

INJECT = f'''
import errno
from orbax.checkpoint import JsonCheckpointHandler

_save = JsonCheckpointHandler._save_fn


async def _disk_full_at_step(self, item, directory):
    if directory.parent.name.split(".")[0] == "{FAILING_STEP}":
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))
    return await _save(self, item, directory)
'''
INSTALL = "JsonCheckpointHandler._save_fn = _disk_full_at_step\n"

PATTERN = (rf"checkpoint step {FAILING_STEP} could not be written: No space left on device "
           r"\(workdir (?P<workdir>.+)\); checkpoint step 15 is the last complete one; traceback "
           r"in (?P<log>\S+)$")


@pytest.mark.slow
def test_a_failed_background_save_stops_the_run_at_the_next_step(compilation_cache_dir,
                                                                 tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    namespace = {}
    exec(INJECT, namespace)       # noqa: S102 (the same injection as the CLI test's)
    monkeypatch.setattr(JsonCheckpointHandler, "_save_fn", namespace["_disk_full_at_step"])
    steps = []

    def slow_step(step, metrics):
        steps.append(step)
        time.sleep(STEP_SECONDS)

    with pytest.raises(CheckpointWriteError) as info:
        train_and_evaluate(tiny_config(**RUN), workdir, step_callback=slow_step)
    match = re.fullmatch(PATTERN, str(info.value))
    assert match and match["workdir"] == workdir, str(info.value)
    # noticed after the first step that follows the end of the background write, not at the
    # next save (step 45, which would wait for it)
    assert FAILING_STEP <= steps[-1] < FAILING_STEP + 10, steps[-1]
    log = open(match["log"]).read()
    assert "Traceback" in log and "No space left on device" in log
    monkeypatch.undo()     # the disk has space again

    with Checkpointer(os.path.join(workdir, "checkpoints"), keep=3, async_save=False) as ck:
        assert ck.all_steps() == [15] and ck.verify(15)
    resumed = train_and_evaluate(tiny_config(**RUN), workdir)
    straight = train_and_evaluate(tiny_config(**RUN), str(tmp_path / "straight"))
    assert resumed["start_step"] == 15
    np.testing.assert_allclose([l for _, l in resumed["losses"]],
                               [l for _, l in straight["losses"][15:]], rtol=1e-6, atol=1e-7)
    assert load_params(workdir).step == 45


def test_the_cli_prints_one_line(compilation_cache_dir, tmp_path):
    script = tmp_path / "train_with_full_disk.py"
    script.write_text(INJECT + INSTALL + f'''
import sys
sys.path.insert(0, {TESTS!r})
from absl import app
from sleepjax import train
from sleepjax.training import cli

app.run(train.main, flags_parser=cli.make_flags_parser())
''')
    config = tmp_path / "experiment.py"
    config.write_text("import sys\n"
                      f"sys.path.insert(0, {TESTS!r})\n"
                      "from support.training import tiny_config\n\n\n"
                      "def get_config(arg=None):\n"
                      f"    return tiny_config(**{RUN!r})\n")
    proc = subprocess.run([sys.executable, str(script), f"--config={config}",
                           f"--workdir={tmp_path}/run",
                           f"--compilation_cache_dir={compilation_cache_dir}"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-5000:]
    assert re.fullmatch("error: " + PATTERN, lines[0]), lines
