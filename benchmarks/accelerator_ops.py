"""Sections 1 and 2 of ``accelerator_check.py``: the gated delta rule's kernels against the
recurrent reference on the device, and the op's speed side by side with its peers.

The comparison is the tests' (``tests/support/ops.py``: fla-style inputs, random cotangents,
relative RMS of o, the final state and all six gradients); the timed calls are
``bench_gdr``'s (the loss of ``build_jax``, the torch sides of ``build_torch_side``).
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench_gdr import build_jax, build_peer, build_torch_side, load_peer, time_alternating
from bench_gdr import make_inputs as speed_inputs
from pallas_kernels.gated_delta_rule.pallas import gated_delta_rule_pallas
from sleepjax.ops import gated_delta_rule
from support.ops import (PALLAS_CASES, TOLERANCES, cotangents_for, errors_vs_reference, forward_and_vjp,
                         forward_only, make_inputs, over_tolerance, recurrent_reference, rel_rms)

# (B, T, H, K, V, chunk, dtype): the Pallas tests' shapes at B = 1, H = 4 and the large shape
# with bfloat16 inputs (the state is float32 in every implementation). A quick typical case runs
# first (do the kernels compile and run at all), the large one second, so that a unit stopped at
# its budget has checked both.
_TESTS = [(1, seq, 4, dk, dv, chunk, dtype) for seq, dk, dv, chunk, dtype in PALLAS_CASES]
KERNEL_SHAPES = {
    False: _TESTS[1:2] + [(4, 4096, 16, 128, 128, 64, jnp.bfloat16)] + _TESTS[:1] + _TESTS[2:],
    True: [(1, 40, 2, 16, 32, 16, jnp.bfloat16)],
}
# (B, T, H, D): fla's published shapes with T = 4096 and 16384, bfloat16 q/k/v/beta.
SPEED_SHAPES = {False: [(4, 4096, 64, 128), (2, 16384, 16, 128)], True: [(1, 32, 2, 16)]}
SPEED_REPEATS = {False: 5, True: 2}
SPEED_BLOCK_SECONDS = 0.05     # calls per timed block: about this long, 1 to 20 calls
CHUNK = 64
# fla's chunk_gdn (ms) in its README's benchmark table: NVIDIA GB200, CUDA 12.9, PyTorch 2.9.0,
# bfloat16 (github.com/fla-org/flash-linear-attention, README "Benchmarks").
FLA_GB200_MS = {(4, 4096, 64, 128): {"fwd": 1.581, "fwd+bwd": 5.964},
                (2, 16384, 16, 128): {"fwd": 1.029, "fwd+bwd": 3.616}}


def triton_pallas(q, k, v, g, beta, *, initial_state, impl, chunk_size):
    """The GPU (Triton) kernels in both directions: compiled on a GPU, interpret mode on a CPU."""
    del impl
    return gated_delta_rule_pallas(q, k, v, g, beta, initial_state=initial_state, scale=q.shape[-1] ** -0.5,
                                   chunk_size=chunk_size, backend="gpu")


# report name -> (impl, op) of support.ops.forward_and_vjp; XLA first: its result is recorded
# even if the Triton compile of the same shape outlasts the unit's budget.
KERNELS = {"xla chunked": ("chunked", gated_delta_rule), "pallas (GPU kernels)": ("pallas", triton_pallas)}


def describe_error(err):
    return f"{type(err).__name__}: {err}"[:3000]


def all_finite(result):
    return all(bool(np.all(np.isfinite(np.asarray(x, np.float32)))) for x in jax.tree.leaves(result))


def run_kernels(dry_run, rec, progress):
    for bsz, seq, heads, dk, dv, chunk, dtype in KERNEL_SHAPES[dry_run]:
        dtype_name = jnp.dtype(dtype).name
        shape = f"B={bsz} T={seq} H={heads} K={dk} V={dv} chunk={chunk} {dtype_name}"
        try:
            args = make_inputs(seq + dk + 7, bsz, seq, heads, dk, dv, dtype=dtype)
            cotangents = cotangents_for(args)
            reference = jax.device_get(recurrent_reference(args, *cotangents))
        except Exception as err:   # the reference itself failed (e.g. out of memory): say so, go on
            progress(f"kernels {shape}: recurrent reference FAILED: {describe_error(err)}")
            rec.set("cases", shape, "recurrent reference", {"error": describe_error(err)})
            continue
        for name, (impl, op) in KERNELS.items():
            started = time.perf_counter()
            try:
                entry = check_kernel(impl, op, chunk, args, cotangents, reference, TOLERANCES[dtype_name])
                entry["seconds"] = time.perf_counter() - started
                progress(f"kernels {name} {shape}: {'ok' if entry['passed'] else 'OFF TOLERANCE'} (max error "
                         f"{max(entry['errors'].values()):.2e}; {entry['seconds']:.1f} s incl. compile)")
            except Exception as err:
                entry = {"error": describe_error(err), "passed": False}
                progress(f"kernels {name} {shape}: FAILED: {entry['error'][:500]}")
            rec.set("cases", shape, name, entry)


def check_kernel(impl, op, chunk, args, cotangents, reference, tolerances):
    """Errors of one implementation against the reference: differentiated (outputs, state, six
    gradients) and not (outputs and state of the inference path)."""
    result = jax.device_get(forward_and_vjp(impl, chunk, op)(args, *cotangents))
    errors = errors_vs_reference(result, reference)
    inference = jax.device_get(forward_only(impl, chunk, op)(args))
    errors.update({f"{out}_forward_only": rel_rms(x, x_ref)
                   for out, x, x_ref in zip(("o", "final_state"), inference, reference)})
    finite = all_finite((result, inference))
    bad = over_tolerance(errors, *tolerances)
    return {"errors": errors, "tolerance": list(tolerances), "finite": finite, "passed": finite and not bad}


def torch_sides(on_gpu, progress):
    """{side: build(mode, arrays) -> run} of the importable torch peers, and {side: why not}."""
    sides, missing = {}, {}
    peer = load_peer(threads=2)
    if peer is None:
        missing["transformers (torch chunked)"] = "torch or transformers not importable"
        return sides, missing
    torch = peer[0]
    if on_gpu and not torch.cuda.is_available():
        missing["transformers (torch chunked)"] = missing["fla chunk_gated_delta_rule"] = "torch sees no CUDA device"
        return sides, missing
    device = "cuda" if on_gpu else "cpu"
    sides["transformers (torch chunked)"] = lambda mode, arrays: build_peer(peer, mode, arrays, CHUNK, device)
    if not on_gpu:
        missing["fla chunk_gated_delta_rule"] = "its Triton kernels need a CUDA device"
        return sides, missing
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception as err:    # not installed, or built for another torch / triton
        missing["fla chunk_gated_delta_rule"] = describe_error(err)
        return sides, missing

    def fla_forward(args):
        return chunk_gated_delta_rule(*args[:5], initial_state=args[5], output_final_state=True)

    sides["fla chunk_gated_delta_rule"] = lambda mode, arrays: build_torch_side(torch, fla_forward, mode, arrays,
                                                                                 device)
    progress("speed: torch peers: " + ", ".join(sides))
    return sides, missing


def time_side(name, build, repeats):
    """{ms, calls per block, first call s} of one side: a first call (compile, autotuning), a
    second to size the blocks, then the median per-call time of ``repeats`` blocks."""
    started = time.perf_counter()
    run = build()
    run()
    first = time.perf_counter() - started
    started = time.perf_counter()
    run()
    block = int(min(20, max(1, SPEED_BLOCK_SECONDS / max(time.perf_counter() - started, 1e-6))))
    seconds = time_alternating({name: run}, repeats, block)[name]
    return {"ms": 1e3 * seconds, "calls_per_block": block, "first_call_s": first}


def run_speed(dry_run, rec, progress):
    """Side by side, one side at a time over every shape and mode: a unit stopped at its budget
    loses the last sides (the torch peers, whose first calls compile and autotune), not a shape."""
    on_gpu = jax.default_backend() == "gpu"
    peers, missing = torch_sides(on_gpu, progress)
    rec.set("unavailable", missing)
    arrays = {}
    for shape in SPEED_SHAPES[dry_run]:
        label = "B={} T={} H={} D={}".format(*shape)
        arrays[label] = speed_inputs(*shape, jnp.bfloat16)
        if shape in FLA_GB200_MS:
            rec.set("anchor_ms", label, FLA_GB200_MS[shape])
    inputs = {label: [jax.device_put(x) for x in xs] for label, xs in arrays.items()}
    builds = {f"sleepjax {impl}": (lambda mode, label, impl=impl: jit_runner(impl, mode, inputs[label]))
              for impl in ("chunked", "pallas")}
    builds.update({side: (lambda mode, label, build=build: build(mode, arrays[label]))
                   for side, build in peers.items()})
    for side, build in builds.items():
        for label in arrays:
            for mode in ("fwd", "fwd+bwd"):
                try:
                    entry = time_side(side, lambda: build(mode, label), SPEED_REPEATS[dry_run])
                    progress(f"speed {label} {mode} {side}: {entry['ms']:.3f} ms")
                except Exception as err:
                    entry = {"error": describe_error(err)}
                    progress(f"speed {label} {mode} {side}: FAILED: {entry['error'][:500]}")
                rec.set("times", label, mode, side, entry)
                free_torch_cache()


def jit_runner(impl, mode, inputs):
    compiled = build_jax(impl, mode, CHUNK).lower(*inputs).compile()
    return lambda: jax.block_until_ready(compiled(*inputs))


def free_torch_cache():
    """Hand torch's cached blocks back to the device, for the JAX sides that follow."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
