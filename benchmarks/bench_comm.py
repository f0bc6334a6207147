"""Communication per training step on a device mesh, read from the compiled HLO.

For each mesh (data x model, optionally fsdp) the full training step (forward with sleep
passes, backward, Muon + AdamW update) is compiled for 8 fake CPU devices and the collectives of
the compiled module are summed: operand bytes of every all-reduce / all-gather /
reduce-scatter / all-to-all / collective-permute, multiplied by the trip counts of the loops
they sit in. It also reports every ``while`` loop that contains a collective, and checks that
the gated-delta-rule recurrence loops (built in ``sleepjax/ops``) contain none.

Wall-clock scaling on fake CPU devices is meaningless (they share the host's cores), so no
step times are printed here; on a GPU/TPU host pass ``--time`` to add a measured step time.

    python benchmarks/bench_comm.py                      # default meshes, markdown table
    python benchmarks/bench_comm.py --meshes 8x1 2x4 2x2x2 --time
"""

from __future__ import annotations

import argparse
import os
import sys

if "--devices-already-set" not in sys.argv:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import hlo_collectives  # noqa: E402  (benchmarks/, beside this script)
from sleepjax.models.config import ModelConfig, SleepConfig  # noqa: E402
from sleepjax.models.sleep_lm import SleepLM  # noqa: E402
from sleepjax.parallel.data_parallel import jit_train_step  # noqa: E402
from sleepjax.parallel.mesh import make_mesh  # noqa: E402
from sleepjax.parallel.multihost import make_global_batch  # noqa: E402
from sleepjax.parallel.state_shardings import train_state_shardings  # noqa: E402
from sleepjax.training.config import OptimConfig  # noqa: E402
from sleepjax.training.optimizer import make_optimizer  # noqa: E402
from sleepjax.training.state import init_train_state  # noqa: E402
from sleepjax.training.train_step import make_train_step  # noqa: E402

KINDS = hlo_collectives.COLLECTIVE_KINDS
OPS_FILES = ("sleepjax/ops/", "pallas_kernels/")


def parse_mesh(text: str) -> dict:
    parts = [int(x) for x in text.lower().split("x")]
    if len(parts) == 2:
        return {"data": parts[0], "fsdp": 1, "model": parts[1]}
    if len(parts) == 3:
        return {"data": parts[0], "fsdp": parts[1], "model": parts[2]}
    raise ValueError(f"--meshes: expected DATAxMODEL or DATAxFSDPxMODEL, got {text!r}")


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def measure(mesh_cfg, model, model_cfg, optimizer, batch_host, state_host, time_steps: int):
    devices = jax.devices()[: mesh_cfg["data"] * mesh_cfg["fsdp"] * mesh_cfg["model"]]
    mesh = make_mesh(mesh_cfg, devices=devices)
    abstract = jax.eval_shape(lambda: state_host)
    shardings = train_state_shardings(abstract, mesh, model_cfg)
    state = jax.device_put(state_host, shardings)
    batch = make_global_batch(batch_host, mesh)
    step = jit_train_step(make_train_step(model, optimizer), shardings, mesh, donate=False)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = step.jitted.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    module = hlo_collectives.HloModule(compiled.as_text())
    loops = module.while_loops()
    recurrence = hlo_collectives.loops_in(loops, file_substrings=OPS_FILES)
    row = {
        "mesh": "x".join(str(mesh_cfg[a]) for a in ("data", "fsdp", "model") if a != "fsdp" or mesh_cfg["fsdp"] > 1),
        "bytes": module.bytes_by_kind(),
        "bytes_outside_loops": sum(module.bytes_by_kind(include_loops=False).values()),
        "counts": module.collective_counts(),
        "recurrence_loops": len(recurrence),
        "recurrence_loops_with_collectives": sum(lp.has_collectives for lp in recurrence),
        "loops_with_collectives": [
            {"function": lp.function, "trip_count": lp.trip_count, "collectives": dict(lp.collectives)}
            for lp in loops if lp.has_collectives],
        "compile_s": compile_s,
    }
    if time_steps:
        compiled(state, batch)[1]["loss"].block_until_ready()
        t0 = time.perf_counter()
        for _ in range(time_steps):
            out = compiled(state, batch)
        jax.block_until_ready(out)
        row["step_ms"] = 1e3 * (time.perf_counter() - t0) / time_steps
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meshes", nargs="+", default=["8x1", "4x2", "2x4", "1x8", "2x2x2"])
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=8)
    parser.add_argument("--pattern", default="AGAG")
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--seq", type=int, default=49, help="tokens per example (3 sleeping windows + 1)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--gdn-impl", default="chunked")
    parser.add_argument("--chunk", type=int, default=8,
                        help="GDN chunk size (< window, so the chunk scan is a real loop in the HLO)")
    parser.add_argument("--time", type=int, default=0, metavar="STEPS",
                        help="also time STEPS steps per mesh (meaningful only on real devices)")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of markdown")
    parser.add_argument("--devices-already-set", action="store_true",
                        help="do not force 8 host devices (run on the real accelerators)")
    args = parser.parse_args(argv)

    model_cfg = ModelConfig(vocab_size=args.vocab, d_model=args.d_model, layer_pattern=args.pattern,
                            attn_heads=args.heads, attn_head_dim=args.head_dim, gdn_heads=args.heads,
                            gdn_head_dim=args.head_dim, gdn_impl=args.gdn_impl,
                            gdn_chunk_size=args.chunk)
    sleep_cfg = SleepConfig(window=args.window, passes=args.passes)
    model = SleepLM(model_cfg, sleep_cfg)
    optimizer = make_optimizer(OptimConfig(), 100)
    state_host = jax.device_get(jax.jit(lambda r, t: init_train_state(model, optimizer, r, t))(
        jax.random.PRNGKey(0), jnp.zeros((1, args.seq), jnp.int32)))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, args.vocab, size=(args.batch, args.seq + 1)).astype(np.int32)
    batch_host = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                  "loss_mask": np.ones((args.batch, args.seq), np.float32)}
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state_host.params))

    rows = [measure(parse_mesh(m), model, model_cfg, optimizer, batch_host, state_host, args.time)
            for m in args.meshes]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return

    print(f"model: d={args.d_model} pattern={args.pattern} heads={args.heads}x{args.head_dim} "
          f"params={n_params:,} ({human(4 * n_params)} f32); window={args.window} passes={args.passes} "
          f"batch={args.batch}x{args.seq} tokens; gdn_impl={args.gdn_impl} chunk={args.chunk}; "
          f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}")
    header = ["mesh (data x [fsdp x] model)"] + list(KINDS) + [
        "total / step", "of which inside loops", "total / param bytes",
        "GDN recurrence loops with collectives"]
    if args.time:
        header.append("step ms")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        total = sum(row["bytes"].values())
        cells = [row["mesh"]] + [human(row["bytes"].get(k, 0)) for k in KINDS] + [
            human(total), human(total - row["bytes_outside_loops"]), f"{total / (4 * n_params):.2f}",
            f"{row['recurrence_loops_with_collectives']} / {row['recurrence_loops']}"]
        if args.time:
            cells.append(f"{row['step_ms']:.1f}")
        print("| " + " | ".join(cells) + " |")
    print()
    print("Loops that contain collectives (function that built the loop: collective counts):")
    for row in rows:
        summary = Counter()
        for lp in row["loops_with_collectives"]:
            summary[f"{lp['function']} (x{lp['trip_count']})"] += sum(lp["collectives"].values())
        text = ", ".join(f"{k}: {v}" for k, v in summary.items()) or "none"
        print(f"- {row['mesh']}: {text}")


if __name__ == "__main__":
    main()
