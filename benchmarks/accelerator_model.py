"""Sections 3-5 of ``accelerator_check.py``: training throughput of the Rule 110 ``paper``
model, the memory fit of the Qwen3.5-0.8B-shaped fine-tuning step, and wake latency.

Each reuses its CPU benchmark: ``bench_train.build_case`` / ``matmul_runner``,
``bench_memory_fit.compiled_grad`` / ``timed_steps``, ``bench_wake_sleep.wake_latency``; this
module adds what a device has and a CPU has not: the allocator's peak memory, and the rates
of bfloat16 and float32 matmuls large enough to reach the chip's peak.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from accelerator_ops import describe_error
from bench_gdr import time_alternating

# The paper's Rule 110 runs: about 5 B training tokens (100 k steps of 512 x 100 tokens) in under
# one A6000 GPU-day each (the paper's training details); their throughput was at least this.
PAPER_RULE110_TOKENS = 5e9
A6000_DAY_S = 86_400.0
TRAIN_SIZES = {False: dict(variant="paper", batch=512, matmul_dims=(4096, 8192), repeats=5),
               True: dict(variant="tiny", batch=4, matmul_dims=(64, 128), repeats=2)}
# bench_memory_fit on XLA:CPU (benchmarks/RESULTS.md, "bench_memory_fit", 2026-11-23): temp
# buffers of the 24-layer loss + gradient, L = 2000, gathered loss, batch 1 (fit from depths 4
# and 8, checked directly at N = 1), and tokens/s of the 4-layer step on the 2-core CPU.
CPU_ESTIMATE = {1: {"temp_gib": 23.08, "cpu_tokens_per_s_4_layers": 218.7},
                4: {"temp_gib": 26.83, "cpu_tokens_per_s_4_layers": 90.0}}
# The dry run's model: the Qwen3.5 block structure at toy widths.
TOY_SHAPE = dict(vocab_size=512, d_model=64, attn_heads=2, attn_head_dim=32, attn_kv_heads=1,
                 attn_output_gate=True, attn_qk_norm=True, rope_fraction=0.25, gdn_heads=2, gdn_head_dim=32,
                 gdn_value_heads=2, gdn_value_head_dim=32, zero_centered_norms=True, mlp_hidden=128,
                 tie_embeddings=True, gdn_impl="chunked", gdn_chunk_size=16)
MEMORY_SIZES = {False: dict(layers=24, window=2000, shape=None, seq=None),
                True: dict(layers=4, window=32, shape=TOY_SHAPE, seq=80)}
WAKE_DRY = dict(far=4, repeats=5)    # the dry run's context (windows) and repeats


def device_peak_bytes():
    """The device allocator's peak bytes in use in this process (None on a CPU)."""
    stats = jax.devices()[0].memory_stats()
    return stats.get("peak_bytes_in_use") if stats else None


def run_train(passes_list, dry_run, rec, progress):
    import bench_train  # the Rule 110 config and data: needs ml_collections and grain

    sizes = TRAIN_SIZES[dry_run]
    rec.set("paper_min_tokens_per_s", PAPER_RULE110_TOKENS / A6000_DAY_S)
    for passes in passes_list:
        key = f"N={passes}"
        try:
            started = time.perf_counter()
            case = bench_train.build_case(sizes["variant"], passes, sizes["batch"], None)
            case["run"]()
            setup_s = time.perf_counter() - started
            peak = device_peak_bytes()      # before the matmuls' operands exist
            runners, flops = {"step": case["run"]}, {}
            for dtype in (jnp.bfloat16, jnp.float32):
                for dim in sizes["matmul_dims"]:
                    name = f"matmul {jnp.dtype(dtype).name} {dim}^3"
                    runners[name], flops[name] = bench_train.matmul_runner(dim, dim, dim, dtype)
                    runners[name]()
            med = time_alternating(runners, sizes["repeats"], 1)
            step_s = med["step"]
            rates = {name: flops[name] / med[name] for name in flops}
            peaks = {dtype: max(rate for name, rate in rates.items() if f" {dtype} " in name)
                     for dtype in ("bfloat16", "float32")}
            achieved = case["flops_per_token"] * case["tokens"] / step_s
            rc = case["rc"]
            entry = {"variant": sizes["variant"], "d_model": rc.model.d_model, "layers": rc.model.layer_pattern,
                     "compute_dtype": rc.model.dtype, "gdn_impl": rc.model.gdn_impl, "batch": sizes["batch"],
                     "seq_len": rc.seq_len, "window": rc.sleep.window, "tokens_per_step": case["tokens"],
                     "step_ms": 1e3 * step_s, "tokens_per_s": case["tokens"] / step_s,
                     "flops_per_token": case["flops_per_token"], "achieved_flops": achieved,
                     "matmul_flops": rates, "peak_matmul_flops": peaks,
                     "mfu": {dtype: achieved / peak for dtype, peak in peaks.items()},
                     "peak_bytes": peak, "setup_and_compile_s": setup_s}
            progress(f"train {key}: {entry['tokens_per_s']:,.0f} tokens/s, MFU "
                     + ", ".join(f"{d} {v:.1%}" for d, v in entry["mfu"].items()))
        except Exception as err:
            entry = {"error": describe_error(err)}
            progress(f"train {key}: FAILED: {entry['error'][:500]}")
        rec.set("cases", key, entry)


def run_memory(passes_list, dry_run, rec, progress):
    import bench_memory_fit as fit

    sizes = MEMORY_SIZES[dry_run]
    shape = sizes["shape"] or fit.QWEN35_08B
    seq = sizes["seq"] or fit.SEQ
    rec.set("setting", {"layers": sizes["layers"], "window": sizes["window"], "seq": seq, "batch": 1,
                        "compute_dtype": "bfloat16", "loss": "gathered", "d_model": shape["d_model"],
                        "vocab_size": shape["vocab_size"]})
    for passes in passes_list:
        key = f"N={passes}"
        try:
            compiled, _, compile_s = fit.compiled_grad(sizes["layers"], sizes["window"], passes, False, 1,
                                                       "bfloat16", shape=shape, seq=seq)
            mem = compiled.memory_analysis()
            progress(f"memory {key}: compiled in {compile_s:.0f} s, XLA temp {mem.temp_size_in_bytes / 2**30:.2f} GiB")
            tokens_per_s = fit.timed_steps(compiled, sizes["layers"], "bfloat16", shape=shape, seq=seq)
            entry = {"compile_s": compile_s, "tokens_per_s": tokens_per_s, "peak_bytes": device_peak_bytes(),
                     "xla_temp_bytes": mem.temp_size_in_bytes, "xla_argument_bytes": mem.argument_size_in_bytes,
                     "xla_output_bytes": mem.output_size_in_bytes}
            if not dry_run:
                entry["cpu_estimate"] = CPU_ESTIMATE.get(passes)
            progress(f"memory {key}: {tokens_per_s:,.0f} tokens/s, peak {entry['peak_bytes']}")
        except Exception as err:
            entry = {"error": describe_error(err)}
            progress(f"memory {key}: FAILED: {entry['error'][:500]}")
        rec.set("cases", key, entry)


def run_wake(dry_run, rec, progress):
    import bench_wake_sleep as wake

    cfg, window, far, repeats, _ = wake.bench_config(quick=dry_run)
    if dry_run:
        far, repeats = WAKE_DRY["far"], WAKE_DRY["repeats"]
    rec.set("setting", {"d_model": cfg.d_model, "layers": cfg.layer_pattern, "window": window,
                        "far_windows": far, "repeats": repeats})
    try:
        ours, theirs = wake.wake_latency(cfg, window, far, repeats)
        for label, times in (("sleep model", ours), ("full attention", theirs)):
            rec.set("latency_ms", label, {f"{n} windows": {"median": 1e3 * t[0], "min": 1e3 * t[1]}
                                          for n, t in times.items()})
            progress(f"wake {label}: 1 window {1e3 * times[1][0]:.3f} ms, {far} windows {1e3 * times[far][0]:.3f} ms")
    except Exception as err:
        rec.set("error", describe_error(err))
        progress(f"wake: FAILED: {describe_error(err)[:500]}")
