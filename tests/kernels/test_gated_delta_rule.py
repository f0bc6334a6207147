"""Gated delta rule: the chunked form against the recurrent reference, plus API contract.

Coverage of the issue's grid without compiling its full product (compilation dominates
on CPU): every value of T in {1, 63, 64, 100, 257}, K and V in {16, 32, 64} and chunk
size in {16, 32, 64} appears in `GRID_CASES`, in mixed combinations (K != V, T not a
multiple of the chunk, T < chunk, T = 1 decode), each in float32, and a subset again with
bfloat16 q/k/v/beta. Every case checks o, the final state and the gradients of all six
inputs (one jit per case) of the default "chunked" form (the XLA form with its hand-written
backward); its groups of chunks, its forward-only dispatch and the autodiff reference form
have their own tests. The Pallas kernels have their own file (test_ops_pallas.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support.ops import ARG_NAMES, TOLERANCES, compare_to_recurrent, cotangents, make_inputs, rel_rms
from pallas_kernels.gated_delta_rule import xla
from pallas_kernels.gated_delta_rule.chunk_math import unit_lower_inverse
from sleepjax.ops import gated_delta_rule

# (T, K, V, chunk_size)
GRID_CASES = [
    (1, 16, 16, 16),
    (63, 32, 16, 16),
    (64, 64, 64, 64),
    (100, 16, 64, 32),
    (257, 64, 32, 64),
    (257, 32, 32, 16),
    (100, 32, 16, 64),
]
BF16_CASES = [(63, 32, 16, 16), (257, 64, 32, 64)]

(F32_TOL_OUT, F32_TOL_GRAD), (BF16_TOL_OUT, BF16_TOL_GRAD) = TOLERANCES["float32"], TOLERANCES["bfloat16"]


@pytest.mark.parametrize("seq,dk,dv,chunk", GRID_CASES)
def test_chunked_matches_recurrent_f32(seq, dk, dv, chunk):
    args = make_inputs(seq + dk, 2, seq, 4, dk, dv)
    compare_to_recurrent("chunked", args, chunk, tol_out=F32_TOL_OUT, tol_grad=F32_TOL_GRAD)


@pytest.mark.parametrize("seq,dk,dv,chunk", BF16_CASES)
def test_chunked_matches_recurrent_bf16(seq, dk, dv, chunk):
    args = make_inputs(seq + dk + 1, 2, seq, 4, dk, dv, dtype=jnp.bfloat16)
    compare_to_recurrent("chunked", args, chunk, tol_out=BF16_TOL_OUT, tol_grad=BF16_TOL_GRAD)


def test_chunked_reference_matches_recurrent():
    """The autodiff form (remat scan) stays selectable and exact."""
    args = make_inputs(9, 1, 100, 4, 32, 16)
    compare_to_recurrent("chunked_reference", args, 16, tol_out=F32_TOL_OUT, tol_grad=F32_TOL_GRAD)


def test_xla_groups_of_chunks_with_padding():
    """Several groups of chunks (17 chunks in groups of 3: the last group padded with no-op
    chunks): outputs, final state and all six gradients match the recurrent reference."""
    args = make_inputs(10, 1, 257, 2, 16, 16)
    d_o, d_state = cotangents(10, (1, 257, 2, 16), (1, 2, 16, 16))

    def run(fn):
        def go(a, d_o, d_state):
            (o, s), pullback = jax.vjp(lambda *x: fn(*x[:5], initial_state=x[5], scale=0.25), *a)
            return o, s, pullback((d_o, d_state))
        return jax.jit(go)(args, d_o, d_state)

    o, s, grads = run(lambda *a, **kw: xla.gated_delta_rule_xla(*a, chunk_size=16, chunks_per_group=3, **kw))
    o_ref, s_ref, grads_ref = run(lambda *a, **kw: gated_delta_rule(*a, impl="recurrent", **kw))
    assert rel_rms(o, o_ref) < F32_TOL_OUT and rel_rms(s, s_ref) < F32_TOL_OUT
    errors = {name: rel_rms(x, y) for name, x, y in zip(ARG_NAMES, grads, grads_ref)}
    assert all(err < F32_TOL_GRAD for err in errors.values()), errors


def test_xla_forward_forms_agree():
    """Undifferentiated calls may run either form (``primal_form``); both give the same values,
    and a bad ``forward`` is rejected."""
    q, k, v, g, beta, h0 = make_inputs(11, 1, 100, 2, 16, 32)
    run = jax.jit(lambda *a, forward: xla.gated_delta_rule_xla(
        *a[:5], initial_state=a[5], scale=0.25, chunk_size=16, chunks_per_group=2, forward=forward),
        static_argnames="forward")
    o_chunked, s_chunked = run(q, k, v, g, beta, h0, forward="chunked")
    for form in ("recurrent", "auto"):
        o, s = run(q, k, v, g, beta, h0, forward=form)
        assert rel_rms(o, o_chunked) < F32_TOL_OUT and rel_rms(s, s_chunked) < F32_TOL_OUT, form
    assert xla.primal_form("auto", 1024, "cpu") == "recurrent"
    assert xla.primal_form("auto", 1024, "gpu") == "chunked"
    assert xla.primal_form("chunked", 16, "cpu") == "chunked"
    with pytest.raises(ValueError, match="`forward` must be one of"):
        xla.gated_delta_rule_xla(q, k, v, g, beta, scale=0.25, forward="fast")


@pytest.mark.parametrize("impl", ["recurrent", "chunked"])
def test_continuation_equals_single_run(impl):
    """T1 tokens, then T2 tokens from the carried state == one run over T1 + T2."""
    q, k, v, g, beta, h0 = make_inputs(3, 1, 100, 4, 32, 16)
    split = 50   # equal halves: one compile for both halves
    run = jax.jit(lambda *a: gated_delta_rule(*a[:5], initial_state=a[5], impl=impl, chunk_size=32))
    o_full, s_full = run(q, k, v, g, beta, h0)
    first = tuple(x[:, :split] for x in (q, k, v, g, beta))
    second = tuple(x[:, split:] for x in (q, k, v, g, beta))
    o1, s1 = run(*first, h0)
    o2, s2 = run(*second, s1)
    assert rel_rms(np.concatenate([np.asarray(o1), np.asarray(o2)], axis=1), o_full) < 1e-5
    assert rel_rms(s2, s_full) < 1e-5


def test_padding_tokens_are_exact_noops():
    """q = k = v = beta = 0 and g = 0 leave the state bit-for-bit unchanged (this is what the
    chunked/Pallas forms pad with), and the chunked form ignores them in its outputs."""
    q, k, v, g, beta, h0 = make_inputs(4, 1, 40, 4, 16, 16)
    pad = lambda x: np.pad(x, [(0, 0), (0, 24)] + [(0, 0)] * (x.ndim - 2))
    padded = tuple(pad(x) for x in (q, k, v, g, beta))
    run = jax.jit(lambda *a, impl: gated_delta_rule(*a[:5], initial_state=a[5], impl=impl, chunk_size=16),
                  static_argnames="impl")
    _, s_rec = run(q, k, v, g, beta, h0, impl="recurrent")
    _, s_rec_padded = run(*padded, h0, impl="recurrent")
    np.testing.assert_array_equal(np.asarray(s_rec), np.asarray(s_rec_padded))
    o_ch, s_ch = run(q, k, v, g, beta, h0, impl="chunked")
    o_ch_padded, s_ch_padded = run(*padded, h0, impl="chunked")
    np.testing.assert_allclose(np.asarray(o_ch), np.asarray(o_ch_padded[:, :40]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(s_ch), np.asarray(s_ch_padded), rtol=0, atol=1e-6)


@pytest.mark.parametrize("seq", [257, 1024])
def test_strong_decay_no_nan_in_outputs_or_grads(seq):
    """g down to -20 per step: cumulative log-decays reach ~-1300 inside a chunk."""
    q, k, v, _, beta, h0 = make_inputs(5, 1, seq, 2, 16, 16)
    g = (-20.0 * np.random.default_rng(6).uniform(size=(1, seq, 2))).astype(np.float32)
    g[:, ::7] = 0.0

    def loss(impl, *args):
        o, s = gated_delta_rule(*args[:5], initial_state=args[5], impl=impl, chunk_size=64)
        return jnp.sum(o ** 2) + jnp.sum(s ** 2)

    vals = {}
    for impl in ("chunked", "recurrent"):
        value, grads = jax.jit(jax.value_and_grad(
            lambda *a: loss(impl, *a), argnums=tuple(range(6))))(q, k, v, g, beta, h0)
        for x in (value, *grads):
            assert np.all(np.isfinite(np.asarray(x))), impl
        vals[impl] = (value, grads)
    assert rel_rms(vals["chunked"][0], vals["recurrent"][0]) < 1e-4
    for gc, gr in zip(vals["chunked"][1], vals["recurrent"][1]):
        assert rel_rms(gc, gr) < 1e-3


def test_unit_lower_inverse_exact_on_hard_matrix():
    """All-ones strictly-lower A (identical keys, beta = 1, no decay): Neumann powers of A
    grow like binomial coefficients; the blocked inverse must stay exact. Non-power-of-2 C."""
    inverse = jax.jit(unit_lower_inverse)
    for size in (48, 64):
        a = np.tril(np.ones((size, size), np.float32), -1)
        product = np.asarray(inverse(a)) @ (np.eye(size) + a)
        np.testing.assert_allclose(product, np.eye(size), atol=1e-5)
    a = (0.3 * np.tril(np.random.default_rng(0).standard_normal((3, 37, 37)), -1)).astype(np.float32)
    product = np.einsum("bij,bjk->bik", np.asarray(inverse(a)), np.eye(37) + a)
    np.testing.assert_allclose(product, np.broadcast_to(np.eye(37), (3, 37, 37)), atol=1e-5)


def test_default_scale_and_dtype():
    q, k, v, g, beta, _ = make_inputs(7, 1, 20, 4, 16, 32, dtype=jnp.bfloat16)
    run = jax.jit(lambda *a, scale: gated_delta_rule(*a, scale=scale, chunk_size=16), static_argnames="scale")
    o_default, s = run(q, k, v, g, beta, scale=None)
    o_explicit, _ = run(q, k, v, g, beta, scale=0.25)
    assert o_default.dtype == jnp.bfloat16 and s.dtype == jnp.float32 and s.shape == (1, 4, 16, 32)
    np.testing.assert_array_equal(np.asarray(o_default, np.float32), np.asarray(o_explicit, np.float32))


# ----------------------------------------------------------------------------- validation

def _good(dk=8, dv=4):
    q, k, v, g, beta, h0 = make_inputs(0, 2, 5, 3, dk, dv)
    return dict(q=q, k=k, v=v, g=g, beta=beta, initial_state=h0)


@pytest.mark.parametrize("field,bad,match", [
    ("q", lambda a: a["q"][0], r"`q` must have rank 4"),
    ("beta", lambda a: a["beta"][..., None], r"`beta` must have rank 3"),
    ("k", lambda a: a["k"][..., :4], r"`k` must have the same shape as q"),
    ("v", lambda a: a["v"][:, :4], r"`v` must be \[B, T, H, V\]"),
    ("g", lambda a: a["g"][:, :, :2], r"`g` must be \[B, T, H\]"),
    ("beta", lambda a: a["beta"][:1], r"`beta` must be \[B, T, H\]"),
    ("initial_state", lambda a: a["initial_state"][..., :3], r"`initial_state` must be \[B, H, K, V\]"),
    ("initial_state", lambda a: np.swapaxes(a["initial_state"], -1, -2), r"`initial_state`"),
    ("g", lambda a: np.where(np.arange(5)[None, :, None] == 2, 0.5, a["g"]), r"`g` is the log of a decay and must be <= 0"),
])
def test_bad_inputs_raise_value_error_naming_argument(field, bad, match):
    args = _good()
    args[field] = bad(args)
    with pytest.raises(ValueError, match=match) as info:
        gated_delta_rule(args.pop("q"), args.pop("k"), args.pop("v"), args.pop("g"), args.pop("beta"),
                         **args)
    if "shape" in match or "rank" in match or field == "initial_state":
        assert "shapes seen" in str(info.value)


@pytest.mark.parametrize("kwargs,match", [
    (dict(impl="fused"), r"`impl` must be one of"),
    (dict(chunk_size=0), r"`chunk_size` must be a positive int"),
    (dict(chunk_size=16.0), r"`chunk_size` must be a positive int"),
])
def test_bad_options_raise_value_error(kwargs, match):
    a = _good()
    with pytest.raises(ValueError, match=match):
        gated_delta_rule(a["q"], a["k"], a["v"], a["g"], a["beta"], **kwargs)


@pytest.mark.parametrize("impl", ["recurrent", "chunked", "chunked_reference", "pallas"])
def test_grouped_value_heads_match_explicitly_repeated_keys(impl):
    """Hk key heads serving H = 2 Hk value heads (Qwen3.5 layout): key head i serves value
    heads 2i, 2i+1. Outputs, final state and all six gradients equal the recurrent reference
    run on explicitly repeated q, k (whose q/k gradients are summed over each group)."""
    q, k, v, g, beta, h0 = make_inputs(5, 1, 11, 4, 8, 6)
    q, k = q[:, :, ::2], k[:, :, ::2]                          # 2 key heads for 4 value heads
    d_o = np.random.default_rng(6).standard_normal(v.shape).astype(np.float32)
    d_s = np.random.default_rng(7).standard_normal(h0.shape).astype(np.float32)

    def run(fn):
        (o, s), pullback = jax.vjp(fn, q, k, v, g, beta, h0)
        return (o, s) + pullback((jnp.asarray(d_o), jnp.asarray(d_s)))

    grouped = run(lambda *a: gated_delta_rule(*a[:5], initial_state=a[5], impl=impl, chunk_size=4))
    repeat = lambda a: jnp.repeat(a, 2, axis=2)                 # noqa: E731
    expected = run(lambda q, k, *rest: gated_delta_rule(repeat(q), repeat(k), *rest[:3],
                                                        initial_state=rest[3], impl="recurrent"))
    for name, got, want in zip(("o", "state") + ARG_NAMES, grouped, expected):
        assert got.shape == want.shape, name
        assert rel_rms(got, want) < 1e-5, (name, rel_rms(got, want))


def test_grouped_value_heads_must_be_a_multiple_of_key_heads():
    q, k, v, g, beta, h0 = make_inputs(5, 1, 6, 3, 8, 6)
    with pytest.raises(ValueError, match="`v`.*multiple"):
        gated_delta_rule(q[:, :, :2], k[:, :, :2], v, g, beta, initial_state=h0)
