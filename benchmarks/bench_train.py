"""Training-step efficiency of the Rule 110 models, measured against the machine.

For the Rule 110 ``tiny`` model (d=64, "AG") and the ``paper`` model (d=256, "AGAG") of
``experiments/rule110.py``, with N in {1, 4} sleep passes and a small batch, this prints:

* tokens/s of the jitted training step (loss, gradient, Muon + AdamW update);
* model FLOPs per token: from XLA's cost analysis of the compiled step (XLA:CPU counts the
  body of a ``while`` loop once, not times its trip count, so under the window and sleep
  scans it is a lower bound), and from an analytic count (below);
* FLOP utilisation: analytic training FLOPs per second over the machine's measured peak: the
  best throughput of the float32 matmuls timed in the same run, alternated with the steps
  (square ``--peak-dims`` and the layer-shaped ones below; on a shared machine the largest
  is not always the fastest);
* the throughput of a float32 matmul at the model's own shape (``[B*L, d] x [d, d]``: one
  window's tokens through one projection), the best a layer of the step could reach.

Analytic count (per token, training = 3 x forward: forward + backward, remat recomputation
not counted, the usual model-FLOPs convention): every weight matrix of a block that runs in a
pass costs 2 x its size (dense projections and the depthwise convolutions alike); attention
scores and values 4 x heads x head_dim x (L+1)/2 (causal within the window); the gated delta
rule's recurrence 6 x heads x K x V; the head 2 x d x vocab, in the wake pass only. Block
weights run in the wake pass and, for full windows followed by more tokens, in the N-1 sleep
passes. The count also reports how much of the head's work goes to positions with no loss.

  python benchmarks/bench_train.py             # batch 8, 5 rounds (~3-5 min on 2 busy cores)
  python benchmarks/bench_train.py --quick     # tiny model only
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import rule110  # noqa: E402
from machine_info import machine_description  # noqa: E402  (benchmarks/, beside this script)
from sleepjax import data  # noqa: E402
from sleepjax.models.sleep_lm import SleepLM  # noqa: E402
from sleepjax.training.config import validate_config  # noqa: E402
from sleepjax.training.optimizer import make_optimizer  # noqa: E402
from sleepjax.training.state import init_train_state  # noqa: E402
from sleepjax.training.train_step import make_train_step  # noqa: E402


def resolved_config(variant, passes, batch_size, gdn_impl):
    cfg = rule110.get_config(variant)
    cfg.sleep.passes = passes
    cfg.train.batch_size = batch_size
    if gdn_impl:
        cfg.model.gdn_impl = gdn_impl
    return validate_config(cfg)


def analytic_flops(rc, params, batch):
    """(training FLOPs per token, head forward FLOPs spent on positions without loss, per token)."""
    model, sleep = rc.model, rc.sleep
    seq, window = rc.seq_len, sleep.window
    start, end = sleep.resolved_loop_range(model.num_layers)
    sleeping_windows = (seq - 1) // window
    per_block = []
    for i, kind in enumerate(model.mixer_pattern):
        weights = [x for x in jax.tree.leaves(params[f"blocks_{i}"]) if x.ndim >= 2]
        flops = 2 * sum(int(np.prod(x.shape)) for x in weights)
        if kind == "A":
            flops += 4 * model.attn_heads * model.attn_head_dim * (window + 1) / 2   # GQA: same
        else:
            flops += 6 * model.gdn_value_heads * model.gdn_head_dim * model.gdn_value_head_dim
        per_block.append(flops)
    wake = sum(per_block)
    sleep_pass = sum(per_block[start:end])
    head = 2 * model.d_model * model.vocab_size
    # Sleep passes run over every full window followed by more tokens, N-1 times.
    sleep_tokens_fraction = sleeping_windows * window / seq
    forward = wake + head + (sleep.passes - 1) * sleep_pass * sleep_tokens_fraction
    no_loss = 1.0 - float(np.mean(np.asarray(batch["loss_mask"]) > 0))
    return 3 * forward, head * no_loss


def xla_flops(compiled):
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float((analysis or {}).get("flops", float("nan")))


def build_case(variant, passes, batch_size, gdn_impl):
    rc = resolved_config(variant, passes, batch_size, gdn_impl)
    model = SleepLM(rc.model, rc.sleep)
    optimizer = make_optimizer(rc.optim, rc.train.steps)
    step = jax.jit(make_train_step(model, optimizer))
    source = data.make_source(rc.task, "train", 0)
    batch = next(iter(data.make_dataset(source, batch_size=batch_size, seed=0, shuffle=False)))
    batch = {name: jnp.asarray(x) for name, x in batch.items()}
    state = jax.jit(lambda rng, tokens: init_train_state(model, optimizer, rng, tokens))(
        jax.random.PRNGKey(0), batch["inputs"][:1])
    compiled = step.lower(state, batch).compile()
    train_flops, head_waste = analytic_flops(rc, state.params, batch)
    tokens = batch["inputs"].size
    return dict(rc=rc, run=lambda: jax.block_until_ready(compiled(state, batch)), tokens=tokens,
                xla_flops_per_token=xla_flops(compiled) / tokens, flops_per_token=train_flops,
                head_waste=head_waste)


def matmul_runner(rows, inner, cols, dtype=jnp.float32):
    """(a call of a ``[rows, inner] x [inner, cols]`` matmul in ``dtype``, its FLOPs)."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((rows, inner), np.float32), dtype)
    b = jnp.asarray(rng.standard_normal((inner, cols), np.float32), dtype)
    compiled = jax.jit(lambda x, y: x @ y).lower(a, b).compile()
    return (lambda: jax.block_until_ready(compiled(a, b))), 2.0 * rows * inner * cols


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model only, 3 rounds")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--peak-dims", type=int, nargs="*", default=[512, 1024, 2048],
                        help="square matmuls whose best throughput is the peak")
    parser.add_argument("--gdn-impl", default=None, help="override the configs' gdn_impl")
    args = parser.parse_args(argv)
    variants = ("tiny",) if args.quick else ("tiny", "paper")
    repeats = args.repeats or (3 if args.quick else 5)

    print(f"# bench_train  {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(f"# machine: {machine_description()}")
    print(f"# command: python {' '.join(sys.argv)}")
    cases = {}
    for variant in variants:
        for passes in (1, 4):
            cases[f"{variant} N={passes}"] = build_case(variant, passes, args.batch, args.gdn_impl)
    runners = {name: case["run"] for name, case in cases.items()}
    peak_flops = {}
    for dim in args.peak_dims:
        runners[f"peak matmul {dim}"], peak_flops[dim] = matmul_runner(dim, dim, dim)
    shape_flops = {}
    for variant in variants:
        rc = next(case["rc"] for name, case in cases.items() if name.startswith(variant))
        run, flops = matmul_runner(args.batch * rc.sleep.window, rc.model.d_model, rc.model.d_model)
        runners[f"{variant} layer matmul"] = run
        shape_flops[variant] = flops
    for run in runners.values():
        run()                                                          # warm-up
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    rates = {dim: flops / med[f"peak matmul {dim}"] for dim, flops in peak_flops.items()}
    layer_rates = {variant: flops / med[f"{variant} layer matmul"] for variant, flops in shape_flops.items()}
    # The best matmul of the run, the layer-shaped ones included: on a shared machine a short
    # small matmul can outrun the large ones (fewer preemptions while it runs).
    peak = max(list(rates.values()) + list(layer_rates.values()))
    print(f"# peak: best float32 matmul of the run {peak / 1e9:.1f} GFLOP/s (square "
          + ", ".join(f"{dim}^3: {rate / 1e9:.1f}" for dim, rate in rates.items())
          + f"; medians of {repeats}, alternated with the steps); batch {args.batch}")
    for variant in variants:
        print(f"# {variant}: one-layer matmul at the model's shape [{args.batch}*L, d] x [d, d]: "
              f"{shape_flops[variant] / med[f'{variant} layer matmul'] / 1e9:.1f} GFLOP/s "
              f"({shape_flops[variant] / med[f'{variant} layer matmul'] / peak:.0%} of peak)")
    print("\n| case | d | step ms | tokens/s | FLOPs/token (XLA cost analysis) | FLOPs/token (analytic) "
          "| GFLOP/s | utilisation of peak | head FLOPs/token on no-loss positions (fwd) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, case in cases.items():
        step_s = med[name]
        achieved = case["flops_per_token"] * case["tokens"] / step_s
        print(f"| {name} | {case['rc'].model.d_model} | {1e3 * step_s:.1f} | {case['tokens'] / step_s:,.0f} "
              f"| {case['xla_flops_per_token']:,.0f} | {case['flops_per_token']:,.0f} | {achieved / 1e9:.2f} "
              f"| {achieved / peak:.1%} | {case['head_waste']:,.0f} |")


if __name__ == "__main__":
    main()
