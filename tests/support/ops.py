"""Shared helpers of the gated-delta-rule tests (and of ``benchmarks/accelerator_check.py``, which
runs the same comparison on a GPU): realistic inputs and the fla-style comparison."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sleepjax.ops import gated_delta_rule

# Per-head decay strength of `make_inputs`: head 0 never decays (g == 0 exactly, the
# fla #104/#389 regression case), then mild, moderate and strong (mean g ~ -6 per step).
HEAD_DECAY_STRENGTHS = (0.0, 0.1, 1.0, 10.0)
ARG_NAMES = ("q", "k", "v", "g", "beta", "initial_state")
# Relative-RMS tolerances (outputs and final state, gradients) by input dtype.
TOLERANCES = {"float32": (2e-5, 1e-4), "bfloat16": (1e-2, 1.5e-2)}
# The Pallas kernels' cases (T, K, V, chunk, dtype) at B = 1, H = 4: T = 1 (decode), T not a
# multiple of the chunk, K != V, every chunk and feature size, float32 and bfloat16.
PALLAS_CASES = [
    (1, 16, 16, 16, jnp.float32),
    (63, 16, 32, 16, jnp.float32),
    (100, 32, 16, 32, jnp.float32),
    (257, 64, 64, 64, jnp.float32),
    (63, 32, 16, 16, jnp.bfloat16),
]


def make_inputs(seed, batch, seq, heads, dk, dv, *, dtype=jnp.float32, strengths=None,
                zero_fraction=0.2):
    """Inputs like a real GDN layer's: L2-normalised q/k, g = logsigmoid(x) * strength
    per head with a fraction of exact zeros, beta in (0, 1), a random initial state.
    Built with numpy (host arrays) so that making inputs compiles nothing."""
    strengths = HEAD_DECAY_STRENGTHS if strengths is None else strengths
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, seq, heads, dk))
    k = rng.standard_normal((batch, seq, heads, dk))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((batch, seq, heads, dv))
    strength = np.asarray([strengths[h % len(strengths)] for h in range(heads)])
    logits = rng.standard_normal((batch, seq, heads)) + 2.0
    g = -np.logaddexp(0.0, -logits) * strength          # log_sigmoid(logits) * strength
    g = np.where(rng.uniform(size=g.shape) < zero_fraction, 0.0, g)
    beta = 1.0 / (1.0 + np.exp(-rng.standard_normal((batch, seq, heads))))
    h0 = 0.5 * rng.standard_normal((batch, heads, dk, dv))
    f32 = np.float32
    return (q.astype(dtype), k.astype(dtype), v.astype(dtype), g.astype(f32), beta.astype(dtype),
            h0.astype(f32))


def rel_rms(actual, expected, floor=1e-6):
    """rms(actual - expected) / max(rms(expected), floor), in float64."""
    a = np.asarray(actual).astype(np.float64)
    e = np.asarray(expected).astype(np.float64)
    return float(np.sqrt(np.mean((a - e) ** 2)) / max(np.sqrt(np.mean(e ** 2)), floor))


@functools.lru_cache(maxsize=None)
def forward_and_vjp(impl, chunk_size, op=gated_delta_rule):
    """jit of (inputs, cotangents) -> (o, final_state, grads of all six inputs): one compile.

    ``op`` is called as ``op(q, k, v, g, beta, initial_state=, impl=, chunk_size=)``."""

    def run(args, d_o, d_state):
        def fwd(*a):
            return op(*a[:5], initial_state=a[5], impl=impl, chunk_size=chunk_size)

        (o, state), pullback = jax.vjp(fwd, *args)
        grads = pullback((d_o.astype(o.dtype), d_state))
        return o, state, grads

    return jax.jit(run)


@functools.lru_cache(maxsize=None)
def forward_only(impl, chunk_size, op=gated_delta_rule):
    """jit of inputs -> (o, final_state), not differentiated: the inference path, which some
    implementations compile differently (no residuals kept for a backward)."""
    return jax.jit(lambda args: op(*args[:5], initial_state=args[5], impl=impl, chunk_size=chunk_size))


def cotangents(seed, o_shape, state_shape):
    rng = np.random.default_rng(seed + 1000)
    return (rng.standard_normal(o_shape).astype(np.float32),
            rng.standard_normal(state_shape).astype(np.float32))


def upcast(args):
    return tuple(np.asarray(x, np.float32) for x in args)


def cotangents_for(args, seed=0):
    """Random cotangents of ``o`` and the final state for these inputs."""
    bsz, seq, heads, dk = args[0].shape
    dv = args[2].shape[-1]
    return cotangents(seed, (bsz, seq, heads, dv), (bsz, heads, dk, dv))


def recurrent_reference(args, d_o, d_state):
    """(o, final_state, grads) of the recurrent reference on the inputs upcast to float32, with
    float32 matmuls at full precision (a GPU's default would use TF32)."""
    with jax.default_matmul_precision("highest"):
        return forward_and_vjp("recurrent", 64)(upcast(args), d_o, d_state)


def errors_vs_reference(result, reference):
    """Relative RMS errors of o, the final state and the six gradients (``d<name>``)."""
    (o, state, grads), (o_ref, state_ref, grads_ref) = result, reference
    errors = {"o": rel_rms(o, o_ref), "final_state": rel_rms(state, state_ref)}
    for name, grad, grad_ref in zip(ARG_NAMES, grads, grads_ref):
        errors["d" + name] = rel_rms(grad, grad_ref)
    return errors


def over_tolerance(errors, tol_out, tol_grad):
    """The errors above their tolerance (NaN counts as above): ``tol_grad`` for the gradients
    (``d<name>``), ``tol_out`` for the rest."""
    return {name: err for name, err in errors.items()
            if not err <= (tol_grad if name.startswith("d") else tol_out)}


def compare_to_recurrent(impl, args, chunk_size, *, tol_out, tol_grad, seed=0):
    """Run `impl` and the recurrent reference (on the same values upcast to float32) with
    the same random cotangents; assert relative RMS errors of o, state and the six grads."""
    bsz, seq, heads, dk = args[0].shape
    dv = args[2].shape[-1]
    d_o, d_state = cotangents_for(args, seed)
    o, state, grads = forward_and_vjp(impl, chunk_size)(args, d_o, d_state)
    assert o.dtype == args[2].dtype and o.shape == (bsz, seq, heads, dv)
    assert state.dtype == jnp.float32
    for name, grad, arg in zip(ARG_NAMES, grads, args):
        assert grad.dtype == arg.dtype, (name, grad.dtype, arg.dtype)
    errors = errors_vs_reference((o, state, grads), recurrent_reference(args, d_o, d_state))
    bad = over_tolerance(errors, tol_out, tol_grad)
    assert not bad, f"{impl} vs recurrent: errors above tolerance {bad} (all: {errors})"
    for tensor in (o, state, *grads):
        assert np.all(np.isfinite(np.asarray(tensor, np.float32)))
    return errors
