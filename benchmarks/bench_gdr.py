"""Benchmark of the gated delta rule: recurrent scan vs chunked XLA form (vs Pallas on GPU/TPU).

For each sequence length T and for forward and forward+backward, every implementation is
compiled first, then runs are interleaved (recurrent, chunked, [pallas], recurrent, ...)
so that machine load affects all alike; the table prints medians (warm-up excluded) and
the time ratios. Peak memory of forward+backward comes from XLA's compiled memory
analysis (arguments + outputs + temporaries) at the largest T.

  python benchmarks/bench_gdr.py --quick      # ~1-2 min on 2 CPU cores: T in {256, 1024}
  python benchmarks/bench_gdr.py              # the full table: T in {256, 1024, 4096}

Pallas is timed only on GPU/TPU (on CPU it would run in interpret mode, which says
nothing about kernel speed); ``--pallas`` forces it anyway.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from sleepjax.ops import gated_delta_rule


def make_inputs(batch, seq, heads, dim, dtype):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((batch, seq, heads, dim))
    k = rng.standard_normal((batch, seq, heads, dim))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((batch, seq, heads, dim))
    g = -np.logaddexp(0.0, -(rng.standard_normal((batch, seq, heads)) + 3.0))   # log_sigmoid
    beta = 1.0 / (1.0 + np.exp(-rng.standard_normal((batch, seq, heads))))
    h0 = 0.1 * rng.standard_normal((batch, heads, dim, dim))
    arrays = [q.astype(dtype), k.astype(dtype), v.astype(dtype), g.astype(np.float32),
              beta.astype(dtype), h0.astype(np.float32)]
    return [jax.device_put(x) for x in arrays]


def build(impl, mode, chunk_size):
    def forward(q, k, v, g, beta, h0):
        return gated_delta_rule(q, k, v, g, beta, initial_state=h0, impl=impl, chunk_size=chunk_size)

    if mode == "fwd":
        return jax.jit(forward)

    def loss(*args):
        o, state = forward(*args)
        return jnp.sum(o.astype(jnp.float32) ** 2) + jnp.sum(state ** 2)

    return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(6))))


def peak_bytes(compiled):
    mem = compiled.memory_analysis()
    if mem is None:
        return float("nan")
    return (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
            - mem.alias_size_in_bytes)


def machine_description():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return f"{platform.node()}: nproc={os.cpu_count()}, {cpu}; jax {jax.__version__} on {jax.default_backend()} ({devices})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="T in {256, 1024}, fewer repeats")
    parser.add_argument("--seq", type=int, nargs="*", help="override the sequence lengths")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64, help="K = V")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--pallas", action="store_true", help="time Pallas even on CPU (interpret mode)")
    args = parser.parse_args(argv)

    seqs = args.seq or ([256, 1024] if args.quick else [256, 1024, 4096])
    repeats = args.repeats or (3 if args.quick else 5)
    impls = ["recurrent", "chunked"]
    if args.pallas or jax.default_backend() in ("gpu", "tpu"):
        impls.append("pallas")
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else np.float32

    print(f"# bench_gdr  {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(f"# machine: {machine_description()}")
    print(f"# command: python {' '.join(sys.argv)}")
    print(f"# B={args.batch} H={args.heads} K=V={args.dim} chunk={args.chunk_size} dtype={args.dtype} "
          f"repeats={repeats} (median, warm-up excluded, impls interleaved)")
    header = f"{'T':>6} {'mode':>7} " + " ".join(f"{impl + ' ms':>13}" for impl in impls)
    header += f" {'rec:chunked':>12}"
    if "pallas" in impls:
        header += f" {'rec:pallas':>11} {'chunked:pallas':>15}"
    print(header)

    memory = {}
    for seq in seqs:
        inputs = make_inputs(args.batch, seq, args.heads, args.dim, dtype)
        for mode in ("fwd", "fwd+bwd"):
            fns = {}
            for impl in impls:
                fn = build(impl, mode, args.chunk_size)
                compiled = fn.lower(*inputs).compile()
                if mode == "fwd+bwd" and seq == max(seqs):
                    memory[impl] = peak_bytes(compiled)
                jax.block_until_ready(compiled(*inputs))         # warm-up
                fns[impl] = compiled
            times = {impl: [] for impl in impls}
            for _ in range(repeats):
                for impl in impls:
                    start = time.perf_counter()
                    jax.block_until_ready(fns[impl](*inputs))
                    times[impl].append(time.perf_counter() - start)
            med = {impl: statistics.median(ts) for impl, ts in times.items()}
            row = f"{seq:>6} {mode:>7} " + " ".join(f"{1e3 * med[impl]:>13.2f}" for impl in impls)
            row += f" {med['recurrent'] / med['chunked']:>11.2f}x"
            if "pallas" in impls:
                row += f" {med['recurrent'] / med['pallas']:>10.2f}x {med['chunked'] / med['pallas']:>14.2f}x"
            print(row, flush=True)

    print(f"# peak memory of fwd+bwd at T={max(seqs)} (XLA memory analysis: args + outputs + temps):")
    for impl, nbytes in memory.items():
        print(f"#   {impl:>9}: {nbytes / 2 ** 20:9.1f} MiB")


if __name__ == "__main__":
    main()
