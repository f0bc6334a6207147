"""Pallas gated delta rule (interpret mode on CPU) against the recurrent reference.

Interpret mode is slow, so this file runs a representative subset of the issue's grid
with small B and H: T not a multiple of the chunk (63, 100, 257), T = 1 (decode), K != V,
every chunk size and feature size, float32 and bfloat16; the full grid runs on the
chunked form in test_ops_gated_delta_rule.py. Every case checks the outputs and the
gradients of all six inputs (initial state included) of the Pallas *backward kernels*
against the recurrent reference. Both kernel flavours are exercised in both directions:
the TPU (Mosaic, sequential chunk grid axis + VMEM scratch) kernels, which are the CPU
default, and the GPU (Triton, in-kernel chunk loop) kernels; the recomputing XLA backward
stays selectable and is checked too. Real-hardware lowering of both directions is checked
by lowering for "tpu" and "cuda" from this CPU host (Pallas -> Mosaic / Triton IR; the
final device compile needs the hardware and is not covered).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from support.ops import ARG_NAMES, PALLAS_CASES, TOLERANCES, compare_to_recurrent, cotangents, make_inputs, rel_rms
from pallas_kernels.gated_delta_rule.pallas import gated_delta_rule_pallas, kernel_geometry
from sleepjax.ops import gated_delta_rule

(F32_TOL_OUT, F32_TOL_GRAD), (BF16_TOL_OUT, BF16_TOL_GRAD) = TOLERANCES["float32"], TOLERANCES["bfloat16"]


@pytest.mark.parametrize("seq,dk,dv,chunk,dtype", PALLAS_CASES)
def test_pallas_matches_recurrent(seq, dk, dv, chunk, dtype):
    args = make_inputs(seq + dk + 7, 1, seq, 4, dk, dv, dtype=dtype)
    tol = (F32_TOL_OUT, F32_TOL_GRAD) if dtype == jnp.float32 else (BF16_TOL_OUT, BF16_TOL_GRAD)
    compare_to_recurrent("pallas", args, chunk, tol_out=tol[0], tol_grad=tol[1])


@pytest.mark.parametrize("backend,tpu_interpret_mode", [("tpu", False), ("tpu", True), ("gpu", False)])
def test_each_kernel_flavour_forward(backend, tpu_interpret_mode):
    """Forward of both kernels in interpret mode, T not a multiple of C, K != V. The TPU
    kernel also runs in TPU interpret mode, which simulates VMEM and fills uninitialised
    memory with NaN (catches a scratch state read before it is written)."""
    q, k, v, g, beta, h0 = make_inputs(11, 2, 45, 2, 16, 32)
    o_ref, s_ref = jax.jit(lambda *a: gated_delta_rule(*a[:5], initial_state=a[5], impl="recurrent"))(
        q, k, v, g, beta, h0)
    interpret = pltpu.InterpretParams(uninitialized_memory="nan") if tpu_interpret_mode else None
    o, s = jax.jit(lambda *a: gated_delta_rule_pallas(
        *a[:5], initial_state=a[5], scale=0.25, chunk_size=16, backend=backend, interpret=interpret))(
        q, k, v, g, beta, h0)
    assert rel_rms(o, o_ref) < F32_TOL_OUT and rel_rms(s, s_ref) < F32_TOL_OUT


def test_pallas_continuation_and_strong_decay():
    """Carrying the state across two calls equals one call; g down to -20 per step gives
    finite outputs and gradients that match the reference."""
    q, k, v, _, beta, h0 = make_inputs(12, 1, 128, 2, 16, 16)
    g = (-20.0 * np.random.default_rng(13).uniform(size=(1, 128, 2))).astype(np.float32)
    g[:, ::5] = 0.0

    def run(impl, *a):
        return gated_delta_rule(*a[:5], initial_state=a[5], impl=impl, chunk_size=32)

    pallas = jax.jit(lambda *a: run("pallas", *a))
    o_full, s_full = pallas(q, k, v, g, beta, h0)
    halves = [tuple(x[:, sl] for x in (q, k, v, g, beta)) for sl in (slice(0, 64), slice(64, 128))]
    o1, s1 = pallas(*halves[0], h0)
    o2, s2 = pallas(*halves[1], s1)
    assert rel_rms(np.concatenate([np.asarray(o1), np.asarray(o2)], axis=1), o_full) < 1e-5
    assert rel_rms(s2, s_full) < 1e-5

    def loss(impl):
        def value(*a):
            o, s = run(impl, *a)
            return jnp.sum(o ** 2) + jnp.sum(s ** 2)
        return jax.jit(jax.value_and_grad(value, argnums=tuple(range(6))))

    val_p, grads_p = loss("pallas")(q, k, v, g, beta, h0)
    val_r, grads_r = loss("recurrent")(q, k, v, g, beta, h0)
    assert rel_rms(val_p, val_r) < 1e-4
    for gp, gr in zip(grads_p, grads_r):
        assert np.all(np.isfinite(np.asarray(gp)))
        assert rel_rms(gp, gr) < 1e-3


@pytest.mark.parametrize("backend,backward", [("gpu", "pallas"), ("tpu", "xla"), ("gpu", "xla")])
def test_backward_of_each_kernel_flavour(backend, backward):
    """Gradients of all six inputs through the GPU (Triton) backward kernel, and through
    the recomputing XLA backward of either forward kernel, match the recurrent reference
    (the TPU backward kernel, the CPU default, is covered by test_pallas_matches_recurrent)."""
    args = make_inputs(21, 1, 45, 2, 16, 32)
    d_o, d_state = cotangents(3, (1, 45, 2, 32), (1, 2, 16, 32))

    def run(fn):
        def grads(a, d_o, d_state):
            _, pullback = jax.vjp(lambda *x: fn(*x[:5], initial_state=x[5]), *a)
            return pullback((d_o, d_state))
        return jax.jit(grads)(args, d_o, d_state)

    grads = run(lambda *a, **kw: gated_delta_rule_pallas(
        *a, scale=16 ** -0.5, chunk_size=16, backend=backend, backward=backward, **kw))
    grads_ref = run(lambda *a, **kw: gated_delta_rule(*a, impl="recurrent", **kw))
    errors = {name: rel_rms(x, y) for name, x, y in zip(ARG_NAMES, grads, grads_ref)}
    assert all(err < F32_TOL_GRAD for err in errors.values()), errors


@pytest.mark.parametrize("platform,backend,marker", [("tpu", "tpu", "tpu_custom_call"),
                                                     ("cuda", "gpu", "triton")])
@pytest.mark.parametrize("backward", ["pallas", "xla"])
def test_kernels_lower_for_hardware(platform, backend, marker, backward):
    """Forward and backward lower for TPU (Mosaic) and CUDA (Triton) from a CPU host; with
    the Pallas backward both directions are kernels, with the XLA backward only the forward."""
    bsz, seq, heads, dk, dv = 2, 150, 4, 64, 32   # padded T = 192: not a power of two
    spec = lambda shape, dt=jnp.float32: jax.ShapeDtypeStruct(shape, dt)
    args = (spec((bsz, seq, heads, dk), jnp.bfloat16), spec((bsz, seq, heads, dk), jnp.bfloat16),
            spec((bsz, seq, heads, dv), jnp.bfloat16), spec((bsz, seq, heads)), spec((bsz, seq, heads)),
            spec((bsz, heads, dk, dv)))

    def loss(*a):
        o, s = gated_delta_rule_pallas(*a[:5], initial_state=a[5], scale=dk ** -0.5, chunk_size=64,
                                       backend=backend, interpret=False, backward=backward)
        return jnp.sum(o.astype(jnp.float32)) + jnp.sum(s)

    text = jax.jit(jax.grad(loss, argnums=tuple(range(6)))).trace(*args).lower(
        lowering_platforms=(platform,)).as_text()
    assert marker in text
    assert f"gated_delta_rule_fwd_{backend}" in text
    assert (f"gated_delta_rule_bwd_{backend}" in text) == (backward == "pallas")


def test_kernel_geometry_padding():
    assert kernel_geometry("tpu", 64, 64, 32) == (64, 128, 128)
    assert kernel_geometry("gpu", 48, 48, 100) == (64, 64, 128)
    assert kernel_geometry("gpu", 8, 8, 16) == (16, 16, 16)


def test_bad_backend_or_backward_raises():
    q, k, v, g, beta, _ = make_inputs(0, 1, 4, 1, 16, 16)
    with pytest.raises(ValueError, match="`backend` must be one of"):
        gated_delta_rule_pallas(q, k, v, g, beta, scale=0.25, backend="cpu")
    with pytest.raises(ValueError, match="`backward` must be one of"):
        gated_delta_rule_pallas(q, k, v, g, beta, scale=0.25, backward="autodiff")


_MULTI_DEVICE_SCRIPT = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from support.ops import make_inputs, rel_rms
    from sleepjax.ops import gated_delta_rule
    assert jax.device_count() == 4
    args = make_inputs(0, 2, 40, 4, 16, 16)
    run = lambda *a: gated_delta_rule(*a[:5], initial_state=a[5], impl="pallas", chunk_size=16)
    o_ref, s_ref = run(*args)   # single device (host arrays)
    specs = [P("data", None, "model", None)] * 3 + [P("data", None, "model")] * 2 + [P("data", "model", None, None)]
    for axis_type in (AxisType.Explicit, AxisType.Auto):
        mesh = jax.make_mesh((2, 2), ("data", "model"), axis_types=(axis_type,) * 2)
        sharded = [jax.device_put(x, NamedSharding(mesh, s)) for x, s in zip(args, specs)]
        o, s = run(*sharded)                                   # eager: shard_map over the inputs' mesh
        assert o.sharding.spec == specs[0], o.sharding
        assert rel_rms(o, o_ref) < 1e-6 and rel_rms(s, s_ref) < 1e-6
        with jax.set_mesh(mesh):
            o, s = jax.jit(run)(*sharded)                      # traced
            jaxpr = jax.jit(run).trace(*sharded).jaxpr
        assert rel_rms(o, o_ref) < 1e-6 and rel_rms(s, s_ref) < 1e-6
        # Explicit axes: read from the tracers' types; Auto: from the sleepjax.parallel logical-axis rules.
        (kernel_map,) = [e for e in jaxpr.eqns if e.primitive.name == "shard_map"]
        assert tuple(kernel_map.params["in_specs"][0]) == ("data", None, "model", None), kernel_map.params["in_specs"]
        if axis_type == AxisType.Explicit:                     # custom_vjp inside shard_map
            loss = lambda *a: sum(jnp.sum(x ** 2) for x in run(*a))
            grad = jax.jit(jax.grad(loss, argnums=(0, 3, 5)))
            with jax.set_mesh(mesh):
                grads = grad(*sharded)
            for g_sharded, g_single in zip(grads, grad(*args)):
                assert rel_rms(g_sharded, g_single) < 1e-5
    time_sharded = [jax.device_put(x, NamedSharding(mesh, P(None, "data"))) for x in args[:5]]
    try:
        run(*time_sharded[:5], args[5])
    except ValueError as err:
        assert "time" in str(err) and "`q`" in str(err), err
    else:
        raise AssertionError("time-sharded input was accepted")
    print("MULTI_DEVICE_OK")
""")


def test_multi_device_inputs_run_under_shard_map():
    """4 fake CPU devices in a subprocess (the flag must not leak into this process)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([tests, os.path.dirname(tests), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", _MULTI_DEVICE_SCRIPT], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0 and "MULTI_DEVICE_OK" in result.stdout, result.stderr[-3000:]
