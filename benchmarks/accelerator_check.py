"""One prepared check of sleepjax on an accelerator: kernels, op speed, training throughput,
memory fit and wake latency, in at most 8 minutes on one GPU (budgeted for an H200).

    python benchmarks/accelerator_check.py OUT_DIR            # on the GPU machine
    python benchmarks/accelerator_check.py OUT_DIR --dry-run  # every section on the CPU, toy sizes

Prints one markdown report (stdout; progress goes to stderr) and writes it with the raw
numbers to ``OUT_DIR/accelerator_check.{md,json}``. Sections (``--sections`` picks some):

1. ``kernels``: the GPU Pallas (Triton) kernels and the XLA chunked form, forward and
   backward, against the recurrent reference: outputs, final state and the gradients of all
   six inputs (relative RMS, the tests' tolerances), at the Pallas tests' shapes and at
   B=4, H=16, T=4096, K=V=128 with bfloat16 inputs and a float32 state.
2. ``speed``: XLA chunked vs Pallas vs flash-linear-attention's Triton kernel and transformers'
   torch chunked form (each when importable), forward and forward+backward, at fla's published
   shapes with T = 4096 and 16384; fla's GB200 times are the anchor.
3. ``train``: the Rule 110 ``paper`` model (d=256 "AGAG", batch 512), N = 1 and 4: tokens/s,
   FLOP utilisation against a bfloat16 and a float32 matmul timed in the same run, peak memory.
4. ``memory``: the Qwen3.5-0.8B-shaped fine-tuning step of ``bench_memory_fit.py`` (24 layers,
   L = 2000, T = 3300, bfloat16 compute), N = 1 and 4, compiled and run: peak memory, tokens/s.
5. ``wake``: ``wake_step`` latency after 1 and 64 windows of context, sleep model vs full attention.

Every unit (a section, or one N of sections 3 and 4) runs in its own process, so a crash or an
out-of-memory error ends only that unit, peak memory is the unit's own, and a unit past its
time budget is stopped (time a unit leaves unused passes to the next). The parent never
imports JAX, so it holds no device memory. A unit records each result as it finishes, so a
stopped unit still reports what it measured. Exit status 1 if any unit failed or any kernel
comparison is off tolerance.

Sections 1, 2, 4 and 5 need only the target image's packages; section 3 builds the Rule 110
config and data, which need ml_collections and grain (the offline wheel folder,
``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (ROOT, os.path.join(ROOT, "tests")):   # sleepjax, pallas_kernels; tests/support
    if path not in sys.path:
        sys.path.insert(1, path)

from accelerator_report import render_report  # noqa: E402  (benchmarks/, beside this script)

SECTIONS = ("kernels", "speed", "train", "memory", "wake")
# (section, cases, seconds) on the GPU: 460 s of unit budgets; FULL_BUDGET_S leaves 10 s more
# for the first unit (unused time passes on) and 10 s of the 480 for the parent.
FULL_UNITS = [("kernels", "", 105), ("speed", "", 95), ("train", "1", 45), ("train", "4", 55),
              ("memory", "1", 65), ("memory", "4", 65), ("wake", "", 30)]
FULL_BUDGET_S = 470
# The dry run: one process per section and one N (every code path, fewer compiles: the sleep
# passes in the training step, N = 1 in the memory step, whose compile is the dry run's largest),
# generous budgets for a loaded 2-core CPU.
DRY_UNITS = [("kernels", "", 300), ("speed", "", 300), ("train", "4", 300), ("memory", "1", 300),
             ("wake", "", 300)]
MIN_UNIT_SECONDS = 10


class Recorder:
    """A unit's results as nested dicts, written to its JSON file after every result."""

    def __init__(self, path):
        self.path, self.data = path, {}

    def set(self, *keys_and_value):
        *keys, value = keys_and_value
        node = self.data
        for key in keys[:-1]:
            node = node.setdefault(str(key), {})
        node[str(keys[-1])] = value
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, default=float)
        os.replace(tmp, self.path)


def progress(message):
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def run_unit(section, cases, dry_run, out_path):
    """Child process: run one unit, recording into ``out_path``."""
    import jax

    from machine_info import machine_description
    import accelerator_model
    import accelerator_ops

    if not dry_run and jax.default_backend() == "cpu":
        raise SystemExit("accelerator_check: JAX sees no accelerator here; use --dry-run on a CPU")
    rec = Recorder(out_path)
    rec.set("machine", machine_description())
    rec.set("backend", jax.default_backend())
    passes = [int(n) for n in cases.split(",") if n]
    run = {"kernels": lambda: accelerator_ops.run_kernels(dry_run, rec, progress),
           "speed": lambda: accelerator_ops.run_speed(dry_run, rec, progress),
           "train": lambda: accelerator_model.run_train(passes, dry_run, rec, progress),
           "memory": lambda: accelerator_model.run_memory(passes, dry_run, rec, progress),
           "wake": lambda: accelerator_model.run_wake(dry_run, rec, progress)}[section]
    run()


def spawn(section, cases, dry_run, out_path, timeout):
    """Run a unit in its own process group; returns (status, seconds, last lines of its output)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # JAX would otherwise take 75% of the GPU at start, leaving torch (section 2) little room;
    # peak memory is read from the allocator's own statistics either way.
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if dry_run:
        env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, os.path.abspath(__file__), "--unit", section, "--cases", cases,
           "--unit-out", out_path] + (["--dry-run"] if dry_run else [])
    started = time.perf_counter()
    # Everything the unit prints goes to the parent's stderr: stdout is the report's alone.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    tail = collections.deque(maxlen=30)

    def forward_output():
        for line in proc.stdout:
            sys.stderr.write(line)
            sys.stderr.flush()
            tail.append(line.rstrip())

    reader = threading.Thread(target=forward_output, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
        status = "ok" if rc == 0 else f"failed (exit status {rc})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        status = f"stopped at its time budget ({timeout:.0f} s)"
    reader.join(timeout=5)
    return status, time.perf_counter() - started, list(tail)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", nargs="?", help="directory for accelerator_check.{md,json}")
    parser.add_argument("--dry-run", action="store_true", help="every section on the CPU at toy sizes")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of "
                        + ", ".join(SECTIONS))
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"whole-check time budget in seconds (default {FULL_BUDGET_S} for all sections)")
    parser.add_argument("--unit", choices=SECTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--cases", default="", help=argparse.SUPPRESS)
    parser.add_argument("--unit-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.unit:
        run_unit(args.unit, args.cases, args.dry_run, args.unit_out)
        return 0
    if not args.out_dir:
        parser.error("OUT_DIR is required")
    wanted = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {unknown}; choose from {SECTIONS}")
    units = [u for u in (DRY_UNITS if args.dry_run else FULL_UNITS) if u[0] in wanted]
    budget = args.budget_s or (sum(seconds for _, _, seconds in units) if args.dry_run
                               else FULL_BUDGET_S - sum(u[2] for u in FULL_UNITS if u not in units))
    os.makedirs(args.out_dir, exist_ok=True)
    meta = {"date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
            "command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
            "dry_run": args.dry_run, "budget_s": budget}
    started = time.perf_counter()
    results, runs = {}, []
    with tempfile.TemporaryDirectory(prefix="accelerator_check_") as tmp:
        for i, (section, cases, _) in enumerate(units):
            later = sum(seconds for _, _, seconds in units[i + 1:])
            timeout = budget - (time.perf_counter() - started) - later
            name = section + (f" N={cases}" if cases else "")
            if timeout < MIN_UNIT_SECONDS:
                runs.append({"unit": name, "status": "skipped: no time left", "seconds": 0.0, "tail": []})
                continue
            progress(f"unit {name}: budget {timeout:.0f} s")
            out_path = os.path.join(tmp, f"{section}_{i}.json")
            status, seconds, tail = spawn(section, cases, args.dry_run, out_path, timeout)
            runs.append({"unit": name, "status": status, "seconds": seconds, "tail": tail if status != "ok" else []})
            progress(f"unit {name}: {status} in {seconds:.1f} s")
            if os.path.exists(out_path):
                with open(out_path) as f:
                    unit = json.load(f)
                for key in ("machine", "backend"):
                    value = unit.pop(key, None)
                    meta[key] = meta.get(key) or value
                merge(results.setdefault(section, {}), unit)
            write_outputs(args.out_dir, meta, runs, results, started)   # kept if the run is cut short
    report, ok = write_outputs(args.out_dir, meta, runs, results, started)
    print(report, flush=True)
    return 0 if ok else 1


def write_outputs(out_dir, meta, runs, results, started):
    """Write accelerator_check.{json,md} with what has run so far; returns (report, ok)."""
    meta["wall_s"] = time.perf_counter() - started
    report, ok = render_report(meta, runs, results)
    data = json.dumps({"meta": meta, "units": runs, "results": results}, indent=1, default=float)
    for name, text in (("accelerator_check.json", data), ("accelerator_check.md", report)):
        path = os.path.join(out_dir, name)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    return report, ok


def merge(into, new):
    """Nested dicts of one section's units into one (the train and memory units share a section)."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


if __name__ == "__main__":
    sys.exit(main())
