"""The markdown report of ``accelerator_check.py``, rendered from its JSON results alone (no
JAX here: the parent process never touches the device)."""

from __future__ import annotations

GIB = 2 ** 30
ERROR_NAMES = ("o", "final_state", "dq", "dk", "dv", "dg", "dbeta", "dinitial_state", "o_forward_only",
               "final_state_forward_only")
SPEED_BASE = "sleepjax chunked"


def _num(value, spec, unit=""):
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def _gib(nbytes):
    return _num(None if nbytes is None else nbytes / GIB, ".2f")


def _failures(entries):
    """(label, error) of every entry with an ``error``, in nested dicts."""
    found = []
    for key, value in entries.items():
        if isinstance(value, dict) and "error" in value:
            found.append((key, value["error"]))
        elif isinstance(value, dict):
            found += [(f"{key} / {label}", err) for label, err in _failures(value)]
    return found


def _error_lines(entries):
    return [f"- **{label}**: `{err.splitlines()[0][:400] if err else ''}`" for label, err in _failures(entries)]


def _with_failures(lines, entries):
    """(the section's lines and its failures, ok): ok when it has results and no failure."""
    errors = _error_lines(entries)
    return lines + (["", "Failures:"] + errors if errors else []), bool(entries) and not errors


def kernels_section(res):
    lines = ["## 1. Kernels on the device: relative RMS error vs the recurrent reference", "",
             "Reference: the token recurrence in float32 at highest matmul precision on the same (upcast) "
             "inputs, the same random cotangents; the tolerances are the CPU tests' (outputs and state / "
             "gradients). `*_forward_only`: the same call not differentiated (the inference path).", "",
             "| kernel | shape | " + " | ".join(ERROR_NAMES) + " | tolerance | result | s |",
             "|---|---|" + "---|" * (len(ERROR_NAMES) + 3)]
    passed = True
    for shape, kernels in res.get("cases", {}).items():
        for kernel, entry in kernels.items():
            if "error" in entry:
                passed = False
                continue
            errors = entry["errors"]
            passed &= bool(entry["passed"])
            verdict = "pass" if entry["passed"] else ("**NON-FINITE**" if not entry["finite"] else "**FAIL**")
            lines.append(f"| {kernel} | {shape} | " + " | ".join(f"{errors[n]:.1e}" for n in ERROR_NAMES)
                         + f" | {entry['tolerance'][0]:g} / {entry['tolerance'][1]:g} | {verdict} "
                         f"| {entry['seconds']:.1f} |")
    lines, clean = _with_failures(lines, res.get("cases", {}))
    return lines, passed and clean


def speed_section(res):
    times = res.get("times", {})
    sides = list(dict.fromkeys(side for modes in times.values() for mode in modes.values() for side in mode))
    others = [s for s in sides if s != SPEED_BASE]
    lines = ["## 2. Op speed: ms per call (median; bfloat16 q/k/v/beta, float32 g and state, chunk 64)", "",
             "Ratios are time / sleepjax chunked time (> 1: slower than the XLA chunked form); the anchor is "
             "fla's published chunk_gdn time on one GB200 at the same shape.", "",
             "| shape | mode | " + " | ".join(sides) + " | " + " | ".join(f"{s} / chunked" for s in others)
             + " | fla GB200 (published) | chunked / fla GB200 |",
             "|---|---|" + "---|" * (len(sides) + len(others) + 2)]
    for shape, modes in times.items():
        for mode, entries in modes.items():
            ms = {side: entries.get(side, {}).get("ms") for side in sides}
            base = ms.get(SPEED_BASE)
            ratios = [_num(ms[s] / base if ms[s] and base else None, ".2f", "x") for s in others]
            anchor = res.get("anchor_ms", {}).get(shape, {}).get(mode)
            lines.append(f"| {shape} | {mode} | " + " | ".join(_num(ms[s], ".3f") for s in sides) + " | "
                         + " | ".join(ratios) + f" | {_num(anchor, '.3f')} | "
                         + _num(base / anchor if base and anchor else None, ".2f", "x") + " |")
    lines += [""] + [f"- {side}: not timed ({why})" for side, why in res.get("unavailable", {}).items()]
    return _with_failures(lines, times)


def train_section(res):
    cases = res.get("cases", {})
    paper = res.get("paper_min_tokens_per_s")
    lines = ["## 3. Training throughput: Rule 110 (loss, gradient, Muon + AdamW update)", "",
             "| N | model | batch x T | tokens/s | step ms | model TFLOP/s | MFU vs bf16 matmul | "
             "MFU vs f32 matmul | peak memory GiB | setup + compile s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, e in cases.items():
        if "error" in e:
            continue
        lines.append(f"| {key} | {e['variant']} d={e['d_model']} {e['layers']} {e['compute_dtype']} "
                     f"{e['gdn_impl']} | {e['batch']} x {e['seq_len']} | {e['tokens_per_s']:,.0f} | "
                     f"{e['step_ms']:.1f} | {e['achieved_flops'] / 1e12:.3g} | {e['mfu']['bfloat16']:.1%} | "
                     f"{e['mfu']['float32']:.1%} | {_gib(e['peak_bytes'])} | {e['setup_and_compile_s']:.0f} |")
    good = [e for e in cases.values() if "error" not in e]
    if good:
        rates = good[0]["matmul_flops"]
        lines += ["", "Matmul rates of the same run (TFLOP/s; float32 at JAX's default precision): "
                  + ", ".join(f"{name} {rate / 1e12:.3g}" for name, rate in rates.items()) + "."]
    if paper and good:
        lines += ["", f"The paper: about 5 B tokens in under one A6000-day per Rule 110 run, i.e. more than "
                  f"{paper:,.0f} tokens/s. Here: " + ", ".join(
                      f"{key} {e['tokens_per_s']:,.0f} tokens/s ({e['tokens_per_s'] / paper:.2f}x that)"
                      for key, e in cases.items() if "error" not in e) + "."]
    return _with_failures(lines, cases)


def memory_section(res):
    cases, s = res.get("cases", {}), res.get("setting", {})
    lines = ["## 4. Memory fit: the Qwen3.5-0.8B-shaped fine-tuning step (loss + gradient)", "",
             f"{s.get('layers')} layers \"GGGA\", d={s.get('d_model')}, vocab {s.get('vocab_size')}, "
             f"L = {s.get('window')}, T = {s.get('seq')}, batch 1, {s.get('compute_dtype')} compute, float32 "
             f"parameters, {s.get('loss')} loss. CPU estimate: `bench_memory_fit` on XLA:CPU "
             "(benchmarks/RESULTS.md): temp buffers only, and tokens/s of a 4-layer step on 2 cores.", "",
             "| N | peak memory GiB (allocator) | XLA temp GiB | XLA arguments + outputs GiB | "
             "CPU estimate temp GiB | tokens/s | CPU tokens/s (4 layers) | compile s |",
             "|---|---|---|---|---|---|---|---|"]
    for key, e in cases.items():
        if "error" in e:
            continue
        cpu = e.get("cpu_estimate") or {}
        lines.append(f"| {key} | {_gib(e['peak_bytes'])} | {_gib(e['xla_temp_bytes'])} | "
                     f"{_gib(e['xla_argument_bytes'] + e['xla_output_bytes'])} | {_num(cpu.get('temp_gib'), '.2f')} | "
                     f"{e['tokens_per_s']:,.1f} | {_num(cpu.get('cpu_tokens_per_s_4_layers'), '.1f')} | "
                     f"{e['compile_s']:.0f} |")
    return _with_failures(lines, cases)


def wake_section(res):
    s, latency = res.get("setting", {}), res.get("latency_ms", {})
    far = f"{s.get('far_windows')} windows"
    lines = ["## 5. Wake latency: one `wake_step` (batch 1), median / min ms", "",
             f"d={s.get('d_model')} \"{s.get('layers')}\", window L = {s.get('window')}, {s.get('repeats')} "
             "interleaved calls each; full attention decodes over a cache of exactly the context.", "",
             f"| model | 1 window | {far} | {far} / 1 window (median) |", "|---|---|---|---|"]
    for model, t in latency.items():
        near_t, far_t = t["1 windows"], t[far]
        lines.append(f"| {model} | {near_t['median']:.3f} / {near_t['min']:.3f} | {far_t['median']:.3f} / "
                     f"{far_t['min']:.3f} | {far_t['median'] / near_t['median']:.2f} |")
    if "error" in res:
        lines += ["", f"Failure: `{res['error'].splitlines()[0][:400]}`"]
    return lines, bool(latency) and "error" not in res


SECTION_RENDERERS = {"kernels": kernels_section, "speed": speed_section, "train": train_section,
                     "memory": memory_section, "wake": wake_section}


def render_report(meta, runs, results):
    """(markdown, ok): ok when every unit finished and every section's results are complete and pass."""
    lines = ["# sleepjax accelerator check" + (" (dry run: CPU, toy sizes, interpret-mode kernels)"
                                                if meta.get("dry_run") else ""), "",
             f"{meta['date']}; {meta.get('machine')}; backend {meta.get('backend')}", "",
             f"Command: `{meta['command']}`; wall time {meta['wall_s']:.0f} s of a {meta['budget_s']:.0f} s budget.",
             "", "| unit | status | s |", "|---|---|---|"]
    ok = True
    for run in runs:
        ok &= run["status"] == "ok"
        lines.append(f"| {run['unit']} | {run['status']} | {run['seconds']:.1f} |")
    for run in runs:
        if run["tail"]:
            lines += ["", f"Last lines of unit {run['unit']}:", "```", *run["tail"], "```"]
    for section, render in SECTION_RENDERERS.items():
        if section in results:
            body, passed = render(results[section])
            ok &= passed
            lines += [""] + body
    return "\n".join(lines) + "\n", ok
