"""Wake latency, sleep cost and training memory of the sleeping hybrid (run on whatever JAX sees).

1. Median wake_step latency after 1 window of context vs after 64 windows, for the sleep model
   (fixed-size state: fast weights + one window of KV) and for a full-attention baseline of the
   same width whose KV cache grows with the context (its decode step attends over a cache sized
   to exactly the context, as a paged / flash-decoding implementation would). Ratio 64w / 1w.
   [1b] the public ``inference.wake_step`` (host-side input checks, then the jitted step) vs
   the jitted step alone: the cost of the checks.
2. The cost of one sleep (passes 2..N over the window + eviction) as a multiple of one window's
   prefill (the parallel wake pass over L tokens), for N in {1, 2, 4}: expected about N - 1.
3. Training-step (loss + grad) temporary memory from XLA's memory_analysis for N in {1, 4, 8},
   with and without rematerialisation.
4. Consuming a prompt of 8 windows: ``inference.prefill`` (whole windows in the parallel
   form) vs ``inference.feed`` (one wake step per token); same results, ratio of times.

    python benchmarks/bench_wake_sleep.py [--quick] [--skip-memory] [--prefill-only]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from sleepjax import inference
from sleepjax.models import ModelConfig, SleepConfig, forward_sequence, init_params
from sleepjax.training.loss import full_logits_token_losses
from sleepjax.models import baseline


def median_seconds(fns, repeats):
    """(median, min) wall time of each function; calls interleaved so machine noise hits all alike.

    On a shared machine the minimum is the better estimate of the intrinsic cost."""
    for fn in fns:
        jax.block_until_ready(fn())                   # compile + warm up
    times = [[] for _ in fns]
    order = np.random.RandomState(0)
    for _ in range(repeats):
        # a fresh order every round: no function always runs right after a cache-sweeping one
        for i in order.permutation(len(fns)):
            start = time.perf_counter()
            jax.block_until_ready(fns[i]())
            times[i].append(time.perf_counter() - start)
    return [(statistics.median(acc), min(acc)) for acc in times]


def wake_latency(model_cfg, window, far_windows, repeats):
    sleep_cfg = SleepConfig(window=window, passes=2)
    params = init_params(model_cfg, jax.random.PRNGKey(0))
    rng = np.random.RandomState(0)
    context = jnp.asarray(rng.randint(0, model_cfg.vocab_size, (1, far_windows * window)), jnp.int32)
    token = jnp.asarray(rng.randint(0, model_cfg.vocab_size, (1,)), jnp.int32)
    step = lambda state: inference._wake_step_jit(params, state, token, model_cfg=model_cfg,
                                                  sleep_cfg=sleep_cfg)
    states = {}
    for n_windows in (1, far_windows):
        state = inference.init_state(model_cfg, sleep_cfg, 1)
        _, states[n_windows], _ = inference.feed(params, state, context[:, :n_windows * window],
                                                 model_cfg=model_cfg, sleep_cfg=sleep_cfg)

    base_params = baseline.init_baseline_params(model_cfg, jax.random.PRNGKey(0))
    prefill = jax.jit(baseline.prefill, static_argnames=("cfg", "max_len"))
    decode = jax.jit(baseline.decode_step, static_argnames=("cfg",))
    caches = {}
    for n_windows in (1, far_windows):
        n_ctx = n_windows * window
        _, caches[n_windows] = prefill(base_params, context[:, :n_ctx], cfg=model_cfg, max_len=n_ctx + 1)
    near, far = (1, far_windows)
    times = median_seconds(
        [lambda: step(states[near]), lambda: step(states[far]),
         lambda: decode(base_params, caches[near], token, jnp.int32(near * window), cfg=model_cfg),
         lambda: decode(base_params, caches[far], token, jnp.int32(far * window), cfg=model_cfg)],
        repeats)
    return {near: times[0], far: times[1]}, {near: times[2], far: times[3]}


def public_call_overhead(model_cfg, window, repeats):
    """(median, min) seconds of the jitted wake step alone and of the public, checked call."""
    sleep_cfg = SleepConfig(window=window, passes=2)
    params = init_params(model_cfg, jax.random.PRNGKey(0))
    rng = np.random.RandomState(3)
    state = inference.init_state(model_cfg, sleep_cfg, 1)
    _, state, _ = inference.feed(params, state, rng.randint(0, model_cfg.vocab_size, (1, window + 1)),
                                 model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    token = jnp.asarray(rng.randint(0, model_cfg.vocab_size, (1,)), jnp.int32)
    kw = dict(model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    return median_seconds([lambda: inference._wake_step_jit(params, state, token, **kw),
                           lambda: inference.wake_step(params, state, token, **kw)], repeats)


def sleep_cost(model_cfg, window, passes_list, repeats):
    """One window's parallel wake pass and one sleep for each N, all timed interleaved."""
    params = init_params(model_cfg, jax.random.PRNGKey(0))
    tokens = jnp.asarray(np.random.RandomState(1).randint(0, model_cfg.vocab_size, (1, window)),
                         jnp.int32)
    prefill_cfg = SleepConfig(window=window, passes=1)
    forward = jax.jit(forward_sequence, static_argnames=("model_cfg", "sleep_cfg"))
    fns = [lambda: forward(params, tokens, model_cfg=model_cfg, sleep_cfg=prefill_cfg)]
    for passes in passes_list:
        sleep_cfg = SleepConfig(window=window, passes=passes)
        state = inference.init_state(model_cfg, sleep_cfg, 1)
        for i in range(window):                        # fill one window without sleeping
            _, state = inference._wake_step_jit(params, state, tokens[:, i], model_cfg=model_cfg,
                                                sleep_cfg=sleep_cfg)
        fns.append(functools.partial(inference._sleep_jit, params, state, model_cfg=model_cfg,
                                     sleep_cfg=sleep_cfg))
    (t_prefill, _), *sleeps = median_seconds(fns, repeats)
    return {passes: (t_prefill, t_sleep) for passes, (t_sleep, _) in zip(passes_list, sleeps)}


def train_memory(model_cfg, window, seq_len, batch, settings):
    params = init_params(model_cfg, jax.random.PRNGKey(0))
    tokens = jnp.zeros((batch, seq_len), jnp.int32)
    rows = {}
    for passes, remat in settings:
        sleep_cfg = SleepConfig(window=window, passes=passes, remat=remat)

        def loss(p, sleep_cfg=sleep_cfg):
            logits = forward_sequence(p, tokens, model_cfg, sleep_cfg)
            return jnp.mean(full_logits_token_losses(logits, tokens)[0])

        compiled = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
        rows[(passes, remat)] = compiled.memory_analysis().temp_size_in_bytes
    return rows


def prompt_prefill(model_cfg, window, n_windows, passes, repeats):
    """(feed, prefill) (median, min) seconds for a prompt of ``n_windows`` windows + 1 token."""
    sleep_cfg = SleepConfig(window=window, passes=passes)
    params = init_params(model_cfg, jax.random.PRNGKey(0))
    prompt = jnp.asarray(np.random.RandomState(2).randint(
        0, model_cfg.vocab_size, (1, n_windows * window + 1)), jnp.int32)
    state = inference.init_state(model_cfg, sleep_cfg, 1)
    run = lambda fn: fn(params, state, prompt, model_cfg=model_cfg, sleep_cfg=sleep_cfg)[0]
    return median_seconds([lambda: run(inference.feed), lambda: run(inference.prefill)], repeats)


def report_prefill(cfg, window, repeats, n_windows=8):
    print(f"\n[4] a prompt of {n_windows} windows + 1 token (batch 1): feed (token by token) vs "
          f"prefill (whole windows in parallel), median / min")
    for passes in (1, 3):
        (feed_med, feed_min), (pre_med, pre_min) = prompt_prefill(cfg, window, n_windows, passes, repeats)
        print(f"  N={passes}: feed {feed_med * 1e3:8.2f} / {feed_min * 1e3:8.2f} ms  prefill "
              f"{pre_med * 1e3:8.2f} / {pre_min * 1e3:8.2f} ms  feed/prefill {feed_med / pre_med:5.2f} "
              f"(min {feed_min / pre_min:5.2f})")


def bench_config(quick):
    """(model, window L, far context in windows, repeats, training-memory sizes) of the benchmark."""
    if quick:
        cfg = ModelConfig(vocab_size=64, d_model=64, attn_heads=2, attn_head_dim=32, gdn_heads=2,
                          gdn_head_dim=32, gdn_chunk_size=16)
        return cfg, 16, 64, 30, dict(window=12, seq_len=50, batch=2)
    cfg = ModelConfig(vocab_size=256, d_model=256, attn_heads=4, attn_head_dim=64, gdn_heads=4,
                      gdn_head_dim=64, gdn_chunk_size=64)
    return cfg, 64, 64, 100, dict(window=24, seq_len=100, batch=8)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke run)")
    parser.add_argument("--skip-memory", action="store_true",
                        help="skip [3] (each gradient compile takes minutes on a small CPU)")
    parser.add_argument("--prefill-only", action="store_true", help="run only [4]")
    args = parser.parse_args()
    cfg, window, far, repeats, mem = bench_config(args.quick)
    print(f"devices: {jax.devices()}  model: d={cfg.d_model} pattern={cfg.layer_pattern} "
          f"gdn_impl={cfg.gdn_impl} window L={window}")

    prefill_repeats = max(5, repeats // 5)   # each call consumes a whole prompt
    if args.prefill_only:
        report_prefill(cfg, window, prefill_repeats)
        return

    ours, theirs = wake_latency(cfg, window, far, repeats)
    print("\n[1] wake_step latency (batch 1), median / min over interleaved calls")
    for label, t in (("sleep model   ", ours), ("full attention", theirs)):
        print(f"  {label}: 1 window {t[1][0] * 1e3:8.3f} / {t[1][1] * 1e3:8.3f} ms | {far} windows "
              f"{t[far][0] * 1e3:8.3f} / {t[far][1] * 1e3:8.3f} ms | ratio median "
              f"{t[far][0] / t[1][0]:.2f}, min {t[far][1] / t[1][1]:.2f}")

    (core_med, core_min), (public_med, public_min) = public_call_overhead(cfg, window, repeats)
    print("\n[1b] public inference.wake_step (host-side checks + jitted step) vs the jitted step")
    print(f"  jitted {core_med * 1e3:8.3f} / {core_min * 1e3:8.3f} ms  public {public_med * 1e3:8.3f}"
          f" / {public_min * 1e3:8.3f} ms  public/jitted median {public_med / core_med:5.2f}, "
          f"min {public_min / core_min:5.2f}")

    print("\n[2] one sleep vs one window prefill (batch 1)")
    for passes, (t_prefill, t_sleep) in sleep_cost(cfg, window, (1, 2, 4), repeats).items():
        print(f"  N={passes}: prefill {t_prefill * 1e3:8.3f} ms  sleep {t_sleep * 1e3:8.3f} ms  "
              f"sleep/prefill {t_sleep / t_prefill:5.2f}  (prefill+sleep)/prefill "
              f"{(t_prefill + t_sleep) / t_prefill:5.2f}   (medians)")

    report_prefill(cfg, window, prefill_repeats)
    if args.skip_memory:
        return
    mem_cfg = dataclasses.replace(cfg, gdn_chunk_size=min(cfg.gdn_chunk_size, mem["window"]))
    # each gradient compile takes minutes on a small CPU, so remat=False only at the ends
    settings = [(1, True), (4, True), (8, True), (1, False), (8, False)]
    rows = train_memory(mem_cfg, mem["window"], mem["seq_len"], mem["batch"], settings)
    print(f"\n[3] training step (loss+grad) XLA temp memory, B={mem['batch']} T={mem['seq_len']} "
          f"L={mem['window']}  (x = relative to N=1 with the same remat setting)")
    for remat in (True, False):
        base = rows[(1, remat)]
        line = "  ".join(f"N={n}: {rows[(n, r)] / 2**20:7.2f} MiB ({rows[(n, r)] / base:4.2f}x)"
                         for n, r in settings if r == remat)
        print(f"  remat={str(remat):5s} {line}")


if __name__ == "__main__":
    main()
