"""The training / eval loss without full-sequence logits.

``token_losses`` of a SleepLM applies the head only at loss positions, in chunks, from the
hidden states (``sleepjax.training.loss.gathered_token_losses``). It must equal the loss of
the full logits (values, accuracy and gradients, several configs, answers spread over
sleeping windows too), and the compiled step's temporary memory must not hold
``[B, T, vocab]`` logits.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from support.model import max_rel_err, model_config, params_for, sleep_config
from sleepjax.models import ModelConfig, SleepConfig, SleepLM, init_params
from sleepjax.models.sleep_lm import forward_sequence
from sleepjax.training.loss import (default_chunk_positions, full_logits_token_losses,
                                    gathered_token_losses, reduce_answer_loss, token_losses)
from sleepjax.training.state import TrainState, init_train_state
from sleepjax.training.train_step import make_eval_step, make_train_step


def _losses(model, params, batch, full, chunk=None):
    """``(ce, correct)`` of the gathered loss, or (``full``) of the full logits."""
    if full:
        logits = forward_sequence(params, batch["inputs"], model.model_cfg, model.sleep_cfg)
        return full_logits_token_losses(logits, batch["targets"])
    return token_losses(model, params, batch, chunk_positions=chunk)[:2]


def _batch(vocab, bsz, seq, mask, seed=0):
    rng = np.random.RandomState(seed)
    return {"inputs": jnp.asarray(rng.randint(0, vocab, (bsz, seq)), jnp.int32),
            "targets": jnp.asarray(rng.randint(0, vocab, (bsz, seq)), jnp.int32),
            "loss_mask": jnp.asarray(mask, jnp.float32)}


def _final_window_mask(bsz, seq, window):
    mask = np.zeros((bsz, seq), np.float32)
    mask[:, ((seq - 1) // window) * window + 1:] = 1.0      # the final (non-sleeping) window
    return mask


def _spread_mask(bsz, seq):
    """Answers in sleeping windows too, position 0, weighted, and a row without any."""
    mask = np.zeros((bsz, seq), np.float32)
    mask[0, [0, 2, 5, 6, 9, seq - 1]] = [1.0, 0.5, 2.0, 1.0, 1.0, 1.0]
    mask[1, :] = 0.0
    return mask


def test_gathered_token_losses_equal_full_logits_for_any_mask_and_chunk():
    """The loss function alone (a norm + dense head on random hidden states): per-position
    cross-entropy, correctness and gradients (head and hidden states) equal the full logits'
    for every chunk size, with loss positions anywhere, weighted, dense or absent in a row."""
    bsz, seq, d, vocab = 3, 13, 8, 37
    rng = np.random.RandomState(0)
    h = jnp.asarray(rng.randn(bsz, seq, d), jnp.float32)
    head_params = {"scale": jnp.asarray(1 + 0.1 * rng.randn(d), jnp.float32),
                   "w": jnp.asarray(rng.randn(d, vocab), jnp.float32)}
    targets = jnp.asarray(rng.randint(0, vocab, (bsz, seq)), jnp.int32)
    mask = np.zeros((bsz, seq), np.float32)
    mask[0, [0, 3, 4, 12]] = [1.0, 0.5, 2.0, 1.0]      # spread and weighted, position 0 too
    mask[2, :] = 1.0                                     # every position; row 1 has none
    mask = jnp.asarray(mask)

    def head(p, x):
        x = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * p["scale"]
        return x @ p["w"]

    def full(p, h):
        logits = head(p, h)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        return jnp.sum(ce * mask), (ce, jnp.argmax(logits, -1) == targets)

    (ref, (ref_ce, ref_ok)), ref_grads = jax.value_and_grad(full, (0, 1), has_aux=True)(head_params, h)
    on = np.asarray(mask) != 0
    for chunk in (1, 4, 5, seq, None):
        def gathered(p, h, chunk=chunk):
            ce, ok = gathered_token_losses(head, p, h, targets, mask, chunk)
            return jnp.sum(ce * mask), (ce, ok)

        (got, (ce, ok)), grads = jax.jit(jax.value_and_grad(gathered, (0, 1), has_aux=True))(
            head_params, h)
        np.testing.assert_allclose(got, ref, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(ce)[on], np.asarray(ref_ce)[on], rtol=1e-6)
        assert not np.asarray(ce)[~on].any() and not np.asarray(ok)[~on].any()
        np.testing.assert_array_equal(np.asarray(ok)[on], np.asarray(ref_ok)[on])
        for r, g in zip(jax.tree.leaves(ref_grads), jax.tree.leaves(grads)):
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)


CASES = {
    # tied head, N=2, answers in the final window, default chunking (one chunk)
    "final_window": (dict(), dict(passes=2), "final", None),
    # untied head, N=2, sliding eviction, answers over every window, 3 positions per chunk
    "spread_sliding": (dict(tie_embeddings=False), dict(passes=2, eviction="sliding"),
                       "spread", 3),
    # bfloat16 activations (float32 fast weights), every position carries loss, 2 per chunk
    "bf16_dense": (dict(dtype="bfloat16"), dict(passes=1), "dense", 2),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_model_loss_equals_full_logits_loss_and_gradients(case):
    model_over, sleep_over, layout, chunk = CASES[case]
    model_cfg = model_config(layer_pattern="AG", **model_over)
    sleep_cfg = sleep_config(**sleep_over)
    model = SleepLM(model_cfg, sleep_cfg)
    params = params_for(model_cfg)
    bsz, seq = 2, 11
    mask = {"final": _final_window_mask(bsz, seq, sleep_cfg.window),
            "spread": _spread_mask(bsz, seq),
            "dense": np.ones((bsz, seq), np.float32)}[layout]
    batch = _batch(model_cfg.vocab_size, bsz, seq, mask)

    def loss(params, full):
        ce, correct = _losses(model, params, batch, full, chunk)
        return reduce_answer_loss(ce, correct, batch["loss_mask"])

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (ref, (ref_acc, ref_n)), ref_grads = grad(params, True)
    (got, (acc, n)), grads = grad(params, False)
    tol = 1e-5 if model_cfg.dtype == "float32" else 1e-2
    assert float(ref) > 0
    np.testing.assert_allclose(float(got), float(ref), rtol=tol)
    assert float(acc) == pytest.approx(float(ref_acc)) and float(n) == float(ref_n)
    flat_ref = jax.tree_util.tree_leaves_with_path(ref_grads)
    flat_got = jax.tree.leaves(grads)
    assert len(flat_ref) == len(flat_got)
    for (path, r), g in zip(flat_ref, flat_got):
        assert r.dtype == g.dtype
        if np.abs(np.asarray(r)).max() > 0:
            assert max_rel_err(g, r) < 10 * tol, (jax.tree_util.keystr(path), max_rel_err(g, r))


def test_eval_step_equals_full_logits_at_answer_positions():
    """Per-position loss everywhere, correctness at the loss positions (False elsewhere)."""
    model_cfg, sleep_cfg = model_config(layer_pattern="AG"), sleep_config(passes=1)
    model = SleepLM(model_cfg, sleep_cfg)
    params = params_for(model_cfg)
    mask = _spread_mask(2, 11)
    batch = _batch(model_cfg.vocab_size, 2, 11, mask)
    ref_ce, ref_correct = jax.jit(lambda p: _losses(model, p, batch, True))(params)
    new_eval = jax.jit(make_eval_step(model, chunk_positions=2))(params, batch)
    on = mask != 0
    np.testing.assert_allclose(new_eval["token_loss"], ref_ce * mask, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(new_eval["correct"])[on],
                                  np.asarray(ref_correct)[on])
    assert not np.asarray(new_eval["correct"])[~on].any()
    np.testing.assert_allclose(new_eval["loss_sum"], np.sum(ref_ce * mask), rtol=1e-5)
    assert float(new_eval["answer_tokens"]) == float(mask.sum())


@pytest.mark.slow
def test_train_step_unchanged_and_no_answer_batch_is_zero():
    """One optimizer step: same metrics and parameters as the full-logits step; a batch with
    no answer token has loss 0 and zero gradients under both."""
    model_cfg, sleep_cfg = model_config(layer_pattern="AG"), sleep_config(passes=2)
    model = SleepLM(model_cfg, sleep_cfg)
    optimizer = optax.sgd(0.1)   # (Adam would amplify rounding in near-zero gradients)
    batch = _batch(model_cfg.vocab_size, 2, 11, _spread_mask(2, 11))
    state = init_train_state(model, optimizer, jax.random.PRNGKey(0), batch["inputs"])
    new_step = jax.jit(make_train_step(model, optimizer, chunk_positions=2))

    @jax.jit
    def reference_step(state, batch):   # the same step from the full logits
        def loss(p):
            ce, correct = _losses(model, p, batch, True)
            return reduce_answer_loss(ce, correct, batch["loss_mask"])
        (value, (accuracy, count)), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state, rng=state.rng)
        return new, {"loss": value, "grad_norm": optax.tree.norm(grads),
                     "token_accuracy": accuracy, "answer_tokens": count}

    ref_state, ref_metrics = reference_step(state, batch)
    got_state, metrics = new_step(state, batch)
    for key in ("loss", "grad_norm", "token_accuracy", "answer_tokens"):
        np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5, err_msg=key)
    for r, g in zip(jax.tree.leaves(ref_state.params), jax.tree.leaves(got_state.params)):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)

    empty = dict(batch, loss_mask=jnp.zeros_like(batch["loss_mask"]))
    _, metrics = new_step(state, empty)
    assert float(metrics["loss"]) == 0.0 and float(metrics["grad_norm"]) == 0.0
    assert bool(metrics["loss_finite"]) and bool(metrics["grad_finite"])


def test_default_chunk_follows_the_vocabulary():
    assert default_chunk_positions(1, 3300, 248320) == 128          # ~128 MiB of f32 logits
    assert default_chunk_positions(64, 200, 11) == 200                # a toy task: one chunk
    assert default_chunk_positions(512, 5000, 248320) == 1


def _grad_temp_bytes(model_cfg, sleep_cfg, bsz, seq, full, chunk):
    model = SleepLM(model_cfg, sleep_cfg)
    params = jax.eval_shape(lambda: init_params(model_cfg, jax.random.PRNGKey(0)))
    spec = jax.ShapeDtypeStruct((bsz, seq), jnp.int32)
    batch = {"inputs": spec, "targets": spec,
             "loss_mask": jax.ShapeDtypeStruct((bsz, seq), jnp.float32)}

    def loss(params, batch):
        ce, correct = _losses(model, params, batch, full, chunk)
        return reduce_answer_loss(ce, correct, batch["loss_mask"])[0]

    compiled = jax.jit(jax.value_and_grad(loss)).lower(params, batch).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_training_temp_memory_does_not_scale_with_vocab_times_length():
    """Compiled loss + gradient of a small model with a big vocabulary: the full-logits loss
    holds ``[B, T, V]`` float32 logits (and their gradient); the gathered loss stays below a
    bound made of a few chunks of logits, a few head-sized buffers (the head's gradient
    accumulator) and a generous activation allowance, none of which has a ``T x V`` term."""
    vocab, d, bsz, seq, chunk = 65536, 32, 1, 256, 16
    model_cfg = ModelConfig(vocab_size=vocab, d_model=d, layer_pattern="G", gdn_heads=2,
                            gdn_head_dim=16, mlp_hidden=64, gdn_chunk_size=16)
    sleep_cfg = SleepConfig(window=seq // 2, passes=2)
    full_logits = bsz * seq * vocab * 4
    activations = 256 * bsz * seq * d * 4      # generous: 256 floats of width d per token
    bound = 4 * bsz * chunk * vocab * 4 + 3 * vocab * d * 4 + activations
    assert bound < full_logits     # the bound is meaningful: it excludes the full logits

    old = _grad_temp_bytes(model_cfg, sleep_cfg, bsz, seq, True, chunk)
    new = _grad_temp_bytes(model_cfg, sleep_cfg, bsz, seq, False, chunk)
    new_long = _grad_temp_bytes(model_cfg, sleep_cfg, bsz, 2 * seq, False, chunk)
    assert old >= full_logits, (old, full_logits)
    assert new < bound, (new, bound)
    # Twice the sequence adds activations only, far less than another T x V of logits.
    assert new_long - new < activations, (new, new_long)
