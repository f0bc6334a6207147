"""Stable sleep training and adaptive sleep: a per-step N (``sleep.train_passes``, the
curriculum), truncated backprop through the passes (``sleep.backprop_passes``) and adaptive
sleep at inference (``sleep.adaptive_tol``), on the one forward path."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support.model import (BATCH, WINDOW, forward, masked_mean_loss, max_rel_err,
                           model_config, params_for, sleep_config, tokens)
from sleepjax import inference
from sleepjax.models import pass_law
from sleepjax.models.sleep_lm import forward_hidden_and_passes, forward_sequence, training_plan
from sleepjax.models.sleep_passes import PassPlan, relative_change, run_passes

SEQ = 3 * WINDOW     # two sleeping windows and a final one


# ----------------------------------------------------------------------------- laws

@pytest.mark.parametrize("text,message", [
    ("gaussian", "unknown law 'gaussian'"), ("uniform:3:2", "1 <= A <= B"),
    ("uniform:1", "two parameters"), ("poisson_lognormal:9:8", "1 <= MEAN <= MAX"),
    ("fixed:4", "takes no parameters"), (4, "must be a string"),
])
def test_a_bad_law_is_one_line_naming_the_key(text, message):
    with pytest.raises(ValueError, match=r"^sleep\.train_passes: .*" + message) as info:
        pass_law.parse_train_passes(text)
    assert "\n" not in str(info.value)


def test_draws_are_a_pure_function_of_seed_and_step_within_the_law():
    uniform = pass_law.parse_train_passes("uniform:1:6")
    draws = [pass_law.passes_for_step(uniform, 4, 0.0, 1000, 7, s) for s in range(600)]
    assert draws == [pass_law.passes_for_step(uniform, 4, 0.0, 1000, 7, s) for s in range(600)]
    assert set(draws) == set(range(1, 7))
    other_seed = [pass_law.passes_for_step(uniform, 4, 0.0, 1000, 8, s) for s in range(600)]
    assert draws != other_seed
    fixed = pass_law.parse_train_passes("fixed")
    assert {pass_law.passes_for_step(fixed, 4, 0.0, 10, 0, s) for s in range(10)} == {4}


def test_poisson_lognormal_has_the_mean_and_the_cap():
    law = pass_law.parse_train_passes("poisson_lognormal:4:8")
    draws = np.array([pass_law.passes_for_step(law, 4, 0.0, 1, 0, s) for s in range(4000)])
    assert draws.min() >= 1 and draws.max() == 8
    # uncapped mean 4; the cap at 8 removes a little of the heavy tail
    assert 3.5 < draws.mean() < 4.0, draws.mean()


def test_curriculum_ramps_from_one_to_the_target_then_holds():
    fixed = pass_law.parse_train_passes("fixed")
    ramp = [pass_law.passes_for_step(fixed, 4, 0.5, 100, 0, s) for s in range(100)]
    assert ramp[0] == 1 and ramp[49] == 4 and set(ramp[50:]) == {4}
    assert ramp == sorted(ramp) and set(ramp) == {1, 2, 3, 4}
    uniform = pass_law.parse_train_passes("uniform:2:6")
    early = {pass_law.passes_for_step(uniform, 4, 0.5, 100, 0, s) for s in range(3)}
    assert early == {1}
    late = {pass_law.passes_for_step(uniform, 4, 0.5, 100, 0, s) for s in range(50, 100)}
    assert late == set(range(2, 7))


# ----------------------------------------------------------------------------- truncated backprop

# Compilation dominates these tests: a 2-layer model, and each config's jitted functions built
# once per worker (shared by the tests below).
TRAIN_MODEL = model_config(tie_embeddings=False, layer_pattern="AG")


@functools.lru_cache(maxsize=None)
def _loss_grad_fn(sleep_cfg):
    """The jitted ``(params, seq[, passes]) -> (loss, grads)`` of the next-token loss on the
    last window: a static N (``sleep_cfg.passes``) without ``passes``, else N as a traced
    scalar (one compiled program for every N)."""
    plan = training_plan(sleep_cfg)

    def loss_and_grad(p, seq, n):
        mask = jnp.zeros(seq.shape, jnp.float32).at[:, 2 * WINDOW:].set(1.0)

        def loss(p):
            logits = forward_sequence(p, seq, TRAIN_MODEL, sleep_cfg, n, plan)
            return masked_mean_loss(logits, jnp.roll(seq, -1, 1), mask)
        return jax.value_and_grad(loss)(p)

    return jax.jit(lambda p, seq: loss_and_grad(p, seq, None)), jax.jit(loss_and_grad)


def _loss_grads(sleep_cfg, seq):
    static, _ = _loss_grad_fn(sleep_cfg)
    return static(params_for(TRAIN_MODEL), jnp.asarray(seq))


def _first_window_only_tokens():
    """Tokens 9 and 10 occur only in the first (sleeping) window."""
    seq = tokens(SEQ, low=0, high=9)
    seq[:, :WINDOW] = tokens(WINDOW, seed=3, low=9, high=11)
    return seq


@pytest.mark.slow
def test_backprop_through_all_n_passes_is_todays_gradient_bitwise():
    seq = _first_window_only_tokens()
    ref_loss, ref = _loss_grads(sleep_config(passes=3), seq)
    loss, grads = _loss_grads(sleep_config(passes=3, backprop_passes=3), seq)
    assert float(loss) == float(ref_loss)
    jax.tree.map(np.testing.assert_array_equal, grads, ref)


@pytest.mark.slow
def test_truncation_sends_no_gradient_to_the_earlier_passes():
    """Tokens 9 and 10 occur only in the first (sleeping) window and no loss reads its wake
    pass, so with an untied head their embedding rows get gradient only through the sleep
    chain: exactly zero once the passes before the last k carry none, non-zero otherwise."""
    seq = _first_window_only_tokens()
    first_window_only = [9, 10]
    _, full = _loss_grads(sleep_config(passes=3), seq)
    assert np.abs(np.asarray(full["embed"]["embedding"])[first_window_only]).min() > 0
    for k in (1, 2):
        _, cut = _loss_grads(sleep_config(passes=3, backprop_passes=k), seq)
        rows = np.asarray(cut["embed"]["embedding"])
        assert not rows[first_window_only].any(), k
        assert np.abs(rows[:9]).max() > 0     # the last passes and the final window still learn
        assert max_rel_err(cut["blocks_1"]["gdn"]["wq"], full["blocks_1"]["gdn"]["wq"]) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("k", [0, 2])
def test_a_per_step_n_is_one_program_with_the_static_gradients(k):
    """N passed as a traced scalar (``sleep.train_passes``): one compiled program whose loss
    and gradients equal those of the same N given statically, for N below, at and above the
    truncation."""
    _, traced = _loss_grad_fn(sleep_config(passes=2, backprop_passes=k,
                                           train_passes="uniform:1:3"))
    seq = _first_window_only_tokens()
    for n in ((1, 3) if k == 0 else (1, 2, 3)):
        loss, grads = traced(params_for(TRAIN_MODEL), jnp.asarray(seq), jnp.asarray(n, jnp.int32))
        ref_loss, ref = _loss_grads(sleep_config(passes=n, backprop_passes=k), seq)
        np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
        for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref)):
            assert max_rel_err(g, r) < 1e-4, (n, max_rel_err(g, r))   # float32 rounding
    assert traced._cache_size() == 1     # every N ran the same compiled program


def test_training_plan_follows_the_law():
    assert training_plan(sleep_config(passes=4)) == PassPlan(max_passes=4)
    plan = training_plan(sleep_config(passes=4, train_passes="poisson_lognormal:4:8",
                                      backprop_passes=2, adaptive_tol=0.1))
    assert plan == PassPlan(max_passes=8, backprop=2)     # training never sleeps adaptively


# ----------------------------------------------------------------------------- adaptive sleep

def test_adaptive_passes_stop_per_row_and_keep_the_stopped_rows():
    """A toy pass whose relative change halves every pass, from a different size per row:
    each row stops after the first pass that changes it by less than the tolerance, and keeps
    its carry while the others go on."""
    scale = jnp.asarray([1.0, 0.1, 0.001])

    def one_pass(carry):
        h, fast = carry
        return h + 1, {"x": fast["x"] * (1 + scale[:, None, None, None] * 0.5 ** h[:, :1, :1, None])}

    carry = (jnp.zeros((3, 1, 1)), {"x": jnp.ones((3, 1, 1, 1))})
    (h, fast), used = run_passes(one_pass, one_pass, carry, 6, PassPlan(max_passes=6,
                                                                       adaptive_tol=0.06))
    # relative change of the i-th sleep pass (i = 0, 1, ...): scale * 0.5**i
    # row 0: 1, .5, .25, .125, .0625: never below .06, all 5 sleep passes of the cap: used 6
    # row 1: .1, .05: stops after its 2nd sleep pass: used 3
    # row 2: .001: stops after its first sleep pass: used 2
    np.testing.assert_array_equal(used, [6, 3, 2])
    np.testing.assert_array_equal(np.asarray(h)[:, 0, 0], [5, 2, 1])
    expected = [np.prod([1 + s * 0.5 ** i for i in range(n - 1)]) for s, n in
                zip([1.0, 0.1, 0.001], [6, 3, 2])]
    np.testing.assert_allclose(np.asarray(fast["x"]).ravel(), expected, rtol=1e-6)


def test_relative_change_is_per_row_and_the_largest_over_layers():
    old = {"a": jnp.ones((2, 1, 2, 2)), "b": jnp.ones((2, 1, 2, 2))}
    new = {"a": old["a"] * jnp.asarray([1.1, 1.0])[:, None, None, None],
           "b": old["b"] * jnp.asarray([1.0, 1.3])[:, None, None, None]}
    np.testing.assert_allclose(relative_change(new, old), [0.1, 0.3], rtol=1e-6)


@pytest.mark.slow
def test_adaptive_sleep_bounds_and_streaming_agree():
    model_cfg = model_config(layer_pattern="AG")
    params = params_for(model_cfg)
    seq = jnp.asarray(tokens(SEQ))
    fixed = forward(params, seq, model_cfg=model_cfg, sleep_cfg=sleep_config(passes=4))
    two = forward(params, seq, model_cfg=model_cfg, sleep_cfg=sleep_config(passes=2))
    never = sleep_config(passes=4, adaptive_tol=1e-12)      # nothing converges that tightly
    first = sleep_config(passes=4, adaptive_tol=1e6)        # every change is below 1e6
    for cfg, ref, n in ((never, fixed, 4), (first, two, 2)):
        logits = forward(params, seq, model_cfg=model_cfg, sleep_cfg=cfg)
        np.testing.assert_allclose(logits, ref, rtol=1e-6, atol=1e-6)
        _, used = jax.jit(forward_hidden_and_passes, static_argnums=(2, 3))(
            params, seq, model_cfg, cfg)
        np.testing.assert_array_equal(used, np.full((BATCH, 2), n))
    # a tolerance in between: rows and windows may stop at different passes; streaming makes
    # the same decisions and gives the same logits
    middle = sleep_config(passes=4, adaptive_tol=_median_change(params, seq, model_cfg))
    logits = forward(params, seq, model_cfg=model_cfg, sleep_cfg=middle)
    _, used = jax.jit(forward_hidden_and_passes, static_argnums=(2, 3))(params, seq, model_cfg,
                                                                        middle)
    state = inference.init_state(model_cfg, middle, BATCH)
    streamed, state, _ = inference.feed(params, state, np.asarray(seq[:, :2 * WINDOW]),
                                        model_cfg=model_cfg, sleep_cfg=middle)
    np.testing.assert_array_equal(state.sleep_passes, np.asarray(used)[:, 1])
    assert max_rel_err(streamed, logits[:, :2 * WINDOW]) < 1e-4


def _median_change(params, seq, model_cfg):
    """A tolerance between the passes' relative changes of this model, so that some windows
    stop early and some do not (each tolerance tried compiles, so from loose to tight until
    the mean passes used lies strictly between 2 and 4)."""
    tried = []
    for tol in np.geomspace(0.5, 1e-3, 10):
        cfg = sleep_config(passes=4, adaptive_tol=float(tol))
        _, used = jax.jit(forward_hidden_and_passes, static_argnums=(2, 3))(params, seq,
                                                                            model_cfg, cfg)
        tried.append((float(tol), float(np.mean(used))))
        if 2 < tried[-1][1] < 4:
            return float(tol)
    raise AssertionError(f"no tolerance stops some windows early: {tried}")


def test_new_keys_reject_bad_values_naming_the_key():
    for kw, key in ((dict(backprop_passes=-1), "sleep.backprop_passes: must be an int >= 0"),
                    (dict(passes_warmup_fraction=1.5), "sleep.passes_warmup_fraction"),
                    (dict(adaptive_tol=-0.1), "sleep.adaptive_tol"),
                    (dict(train_passes="gaussian"), "sleep.train_passes: unknown law")):
        with pytest.raises(ValueError, match=key):
            sleep_config(**kw)
    assert dataclasses.replace(sleep_config(), adaptive_tol=0.1).adaptive_tol == 0.1
