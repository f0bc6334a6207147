"""A ``gs://`` workdir end to end against a local GCS stand-in (:mod:`support.fake_gcs`): the
real clients (gcsfs, google-cloud-storage, tensorstore) talk HTTP to it, so nothing of the run
touches the local disk. Trained with the CLI, killed (SIGKILL), refused while its lease is
fresh, resumed in-process, then swept; the lease and the TensorBoard fallback on their own."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from sleepjax.sweep import POINT_FILE, point_name, run_sweep
from sleepjax.training import paths
from sleepjax.training.checkpointing import load_params
from sleepjax.training.trainer import train_and_evaluate
from sleepjax.training.workdir_lease import ENV_LEASE_S
from sleepjax.training.workdir_lock import WorkdirBusyError, WorkdirLock

from support.fake_gcs import BUCKET, bucket_files, fake_gcs
from support.training import REPO, tiny_config, write_tiny_config_file

# One worker runs the module (one local GCS stand-in and one compilation cache serve it).
pytestmark = pytest.mark.xdist_group("test_bucket_workdir")

STEPS = 25
RUN = {"train__steps": STEPS, "train__checkpoint_every": 5, "train__eval_every": 5}
LEASE_S = 3.0


@pytest.fixture(scope="module")
def gcs_env(compilation_cache_dir, monkeypatch_module):
    with fake_gcs() as env:
        monkeypatch_module.setenv(ENV_LEASE_S, str(LEASE_S))
        yield {**os.environ, **env, "JAX_COMPILATION_CACHE_DIR": compilation_cache_dir,
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
               "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _logged_steps(workdir: str) -> list[int]:
    path = paths.as_path(workdir) / "train_log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_train_kill_resume_and_sweep_in_a_bucket(gcs_env, tmp_path, caplog):
    workdir = f"gs://{BUCKET}/runs/r110"
    config_file = write_tiny_config_file(tmp_path / "experiment.py", **RUN)
    stderr = tmp_path / "stderr.txt"    # a file, not a pipe nobody drains while it runs
    with open(stderr, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "sleepjax.train", f"--config={config_file}",
                                 f"--workdir={workdir}"], cwd=REPO, env=gcs_env,
                                stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 400
    while "checkpoints/5/checksums.json" not in bucket_files("runs/r110"):
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode}:\n{stderr.read_text()[-3000:]}")
        assert time.monotonic() < deadline, "checkpoint 5 not written"
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    assert not any(name.startswith("gs:") for name in os.listdir(REPO))   # nothing local

    # The killed run's lease is fresh: a second run is refused, naming it; once the lease is
    # LEASE_S old it is taken over.
    cfg = tiny_config(**RUN)
    with pytest.raises(WorkdirBusyError, match=rf"in use by another run \(pid {proc.pid} on "):
        train_and_evaluate(cfg, workdir)
    time.sleep(LEASE_S)
    with caplog.at_level(logging.WARNING):
        result = train_and_evaluate(cfg, workdir)
    assert "taking over the lease" in caplog.text
    assert result["start_step"] >= 5 and result["final_eval"]["step"] == STEPS
    assert _logged_steps(workdir) == list(range(1, STEPS + 1))
    history = json.loads((paths.as_path(workdir) / "eval.json").read_text())["history"]
    assert [h["step"] for h in history] == list(range(5, STEPS + 1, 5))
    files = bucket_files("runs/r110")
    assert {"config.json", "config.txt", f"checkpoints/{STEPS}/checksums.json"} <= set(files)
    loaded = load_params(workdir)
    assert loaded.step == STEPS
    np.testing.assert_array_equal(np.asarray(loaded.params["embed"]["embedding"]),
                                  np.asarray(result["params"]["embed"]["embedding"]))

    # A sweep into the bucket: its points, tables and plots are objects; a rerun reuses them.
    sweep_dir = f"gs://{BUCKET}/sweep"
    small = tiny_config()
    seed = int(small.train.seed)
    first = run_sweep(small, sweep_dir, [{"sleep.passes": 1}], [seed])
    files = bucket_files("sweep")
    point = point_name({"sleep.passes": 1}, seed)
    for name in (f"{point}/{POINT_FILE}", "accuracy_vs_passes.json", "accuracy_vs_passes.md",
                 "accuracy_vs_tokens.png", "loss_vs_tokens.png"):
        assert name in files
    again = run_sweep(small, sweep_dir, [{"sleep.passes": 1}], [seed])
    assert again["points"][0]["final_eval"] == first["points"][0]["final_eval"]


def test_bucket_lease_refuses_a_live_holder_and_frees_on_release(gcs_env):
    workdir = f"gs://{BUCKET}/leases/a"
    holder = WorkdirLock(workdir)
    holder.acquire()
    try:
        with pytest.raises(WorkdirBusyError, match=rf"pid {os.getpid()} on .*lease renewed 0 s ago"):
            WorkdirLock(workdir).acquire()
        time.sleep(LEASE_S * 1.5)      # renewed every LEASE_S / 4: still held
        with pytest.raises(WorkdirBusyError):
            WorkdirLock(workdir).acquire()
    finally:
        holder.release()
    with WorkdirLock(workdir):         # released: free at once
        pass
    # Exclusive creation is what makes two simultaneous takers safe: only one wins.
    name = paths.as_path(f"gs://{BUCKET}/leases/exclusive")
    assert paths.create_exclusively(name, "first") and not paths.create_exclusively(name, "second")
    assert name.read_text() == "first"


def test_unsupported_scheme_and_tensorboard_fallback(gcs_env, tmp_path, monkeypatch, caplog):
    with pytest.raises(ValueError, match=r"--workdir: 's3://b/run': s3:// is not supported"):
        train_and_evaluate(tiny_config(), "s3://b/run")

    import tensorboardX

    def no_client(logdir):
        raise ImportError("`google-cloud-storage` must be installed in order to use the 'gs://' "
                          "protocol")

    monkeypatch.setattr(tensorboardX, "SummaryWriter", no_client)
    from sleepjax.training.logging import RunLogger

    with caplog.at_level(logging.WARNING):
        with RunLogger(f"gs://{BUCKET}/tb", total_steps=2, start_step=0, tokens_per_step=1,
                       progress_bar=False) as logger:
            logger.log_train(1, {"loss": 1.0, "grad_norm": 1.0, "token_accuracy": 0.5}, {})
            logger.log_train(2, {"loss": 0.5, "grad_norm": 1.0, "token_accuracy": 0.5}, {})
    warnings = [r for r in caplog.records if "TensorBoard" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert _logged_steps(f"gs://{BUCKET}/tb") == [1, 2]
