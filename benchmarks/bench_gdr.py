"""Benchmark of the gated delta rule: sleepjax's implementations against each other and
against the PyTorch peer (transformers' own chunked gated delta rule).

For each sequence length T and for forward and forward+backward (loss = sum(o^2) +
sum(S^2), gradients of all six inputs), every side is compiled / warmed up first, then
timed in its own block of ``--block`` calls; blocks of the sides alternate, ``--repeats``
rounds, and the table prints the median per-call time of each side, so that the machine's
load affects all sides alike. Peak memory of forward+backward comes from XLA's compiled
memory analysis (arguments + outputs + temporaries) at the largest T.

The peer (``transformers.models.qwen3_5.modeling_qwen3_5.torch_chunk_gated_delta_rule``,
the path Qwen3.5 runs without flash-linear-attention) is timed when torch and transformers
are importable (``pip install -e .[peer]``), with ``torch.set_num_threads(--torch-threads)``.

  python benchmarks/bench_gdr.py --quick      # T in {1024}, peer table, ~1-2 min on 2 cores
  python benchmarks/bench_gdr.py              # T in {1024, 4096}: the issue-15 peer table

Pallas is timed only on GPU/TPU (on CPU it would run in interpret mode, which says
nothing about kernel speed); ``--pallas`` forces it anyway.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from machine_info import machine_description  # benchmarks/, beside this script
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
    return [q.astype(dtype), k.astype(dtype), v.astype(dtype), g.astype(np.float32),
            beta.astype(dtype), h0.astype(np.float32)]


def build_jax(impl, mode, chunk_size):
    def forward(q, k, v, g, beta, h0):
        return gated_delta_rule(q, k, v, g, beta, initial_state=h0, impl=impl, chunk_size=chunk_size)

    if mode == "fwd":
        return jax.jit(forward)

    def loss(*args):
        o, state = forward(*args)
        return jnp.sum(o.astype(jnp.float32) ** 2) + jnp.sum(state ** 2)

    return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(6))))


def load_peer(threads):
    """transformers' torch chunked gated delta rule, or None when torch/transformers are missing.

    transformers wraps it to call flash-linear-attention's kernel instead whenever ``fla`` is
    importable; the peer is the torch form itself, so the wrapper is taken off."""
    try:
        import torch
        from transformers.models.qwen3_5 import modeling_qwen3_5
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch, inspect.unwrap(modeling_qwen3_5.torch_chunk_gated_delta_rule)


def build_peer(peer, mode, arrays, chunk_size, device="cpu"):
    torch, chunk_rule = peer

    def forward(args):
        return chunk_rule(*args[:5], chunk_size=chunk_size, initial_state=args[5], output_final_state=True)

    return build_torch_side(torch, forward, mode, arrays, device)


def build_torch_side(torch, forward, mode, arrays, device="cpu"):
    """A call of a torch gated delta rule ``forward([q, k, v, g, beta, h0]) -> (o, state)`` on
    ``device``, forward only or forward+backward (the loss of ``build_jax``); each call waits
    for the device."""
    tensors = [torch.from_numpy(np.asarray(x, np.float32)).to(device=device, dtype=getattr(torch, x.dtype.name))
               for x in arrays]
    wait = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    if mode == "fwd":
        def run():
            with torch.no_grad():
                out = forward(tensors)
            wait()
            return out
        return run

    def run():
        args = [x.detach().requires_grad_(True) for x in tensors]
        o, state = forward(args)
        ((o.float() ** 2).sum() + (state ** 2).sum()).backward()
        wait()
        return [a.grad for a in args]
    return run


def peak_bytes(compiled):
    mem = compiled.memory_analysis()
    if mem is None:
        return float("nan")
    return (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
            - mem.alias_size_in_bytes)


def time_alternating(runners, repeats, block):
    """Median per-call seconds of each runner; each timed in its own block, blocks alternated."""
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(block):
                run()
            times[name].append((time.perf_counter() - start) / block)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="T = 1024 only, 3 repeats")
    parser.add_argument("--seq", type=int, nargs="*", help="override the sequence lengths")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64, help="K = V")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--block", type=int, default=2, help="calls per timed block")
    parser.add_argument("--impls", nargs="*", default=["recurrent", "chunked"],
                        help="sleepjax implementations (sleepjax.ops.IMPLS)")
    parser.add_argument("--pallas", action="store_true", help="time Pallas even on CPU (interpret mode)")
    parser.add_argument("--no-peer", action="store_true", help="skip the torch peer")
    parser.add_argument("--torch-threads", type=int, default=2)
    args = parser.parse_args(argv)

    seqs = args.seq or ([1024] if args.quick else [1024, 4096])
    repeats = args.repeats or (3 if args.quick else 5)
    impls = list(args.impls)
    if (args.pallas or jax.default_backend() in ("gpu", "tpu")) and "pallas" not in impls:
        impls.append("pallas")
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else np.float32
    peer = None if args.no_peer or args.dtype != "float32" else load_peer(args.torch_threads)
    sides = [f"sleepjax {impl}" for impl in impls] + (["peer (torch)"] if peer else [])

    print(f"# bench_gdr  {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(f"# machine: {machine_description()}")
    if peer:
        import transformers
        print(f"# peer: transformers {transformers.__version__} torch_chunk_gated_delta_rule, "
              f"torch {peer[0].__version__}, {peer[0].get_num_threads()} threads")
    print(f"# command: python {' '.join(sys.argv)}")
    print(f"# B={args.batch} H={args.heads} K=V={args.dim} chunk={args.chunk_size} dtype={args.dtype} "
          f"repeats={repeats} x block {args.block} (median per call; warm-up excluded; sides alternated)")
    print(f"{'T':>6} {'mode':>7} " + " ".join(f"{side + ' ms':>22}" for side in sides))

    medians, memory = {}, {}
    for seq in seqs:
        arrays = make_inputs(args.batch, seq, args.heads, args.dim, dtype)
        inputs = [jax.device_put(x) for x in arrays]
        for mode in ("fwd", "fwd+bwd"):
            runners = {}
            for impl in impls:
                compiled = build_jax(impl, mode, args.chunk_size).lower(*inputs).compile()
                if mode == "fwd+bwd" and seq == max(seqs):
                    memory[impl] = peak_bytes(compiled)
                runners[f"sleepjax {impl}"] = (lambda c=compiled: jax.block_until_ready(c(*inputs)))
            if peer:
                runners["peer (torch)"] = build_peer(peer, mode, arrays, args.chunk_size)
            for run in runners.values():
                run()                                               # warm-up
            med = time_alternating(runners, repeats, args.block)
            medians[(seq, mode)] = med
            print(f"{seq:>6} {mode:>7} " + " ".join(f"{1e3 * med[side]:>22.2f}" for side in sides), flush=True)

    if "recurrent" in impls and "chunked" in impls:
        print("\n# chunked forward vs recurrent forward (recurrent time / chunked time; >= 1 means chunked is faster)")
        for seq in seqs:
            med = medians[(seq, "fwd")]
            print(f"#   T={seq}: {med['sleepjax recurrent'] / med['sleepjax chunked']:.2f}x")
    if peer:
        for impl in impls:
            print(f"\n| peer time / sleepjax {impl} time | " + " | ".join(f"T={s}" for s in seqs) + " |")
            print("|---|" + "---|" * len(seqs))
            for mode, label in (("fwd", "forward"), ("fwd+bwd", "forward + backward")):
                cells = [medians[(s, mode)]["peer (torch)"] / medians[(s, mode)][f"sleepjax {impl}"] for s in seqs]
                print(f"| {label} | " + " | ".join(f"{c:.2f}x" for c in cells) + " |")
    print(f"\n# peak memory of fwd+bwd at T={max(seqs)} (XLA memory analysis: args + outputs + temps):")
    for impl, nbytes in memory.items():
        print(f"#   {impl:>18}: {nbytes / 2 ** 20:9.1f} MiB")


if __name__ == "__main__":
    main()
