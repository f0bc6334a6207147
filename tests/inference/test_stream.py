"""Streaming (wake_step / sleep one token at a time) == the training forward over the sequence."""

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support.model import (BATCH, WINDOW, forward, max_rel_err, model_config, params_for,
                            perturbed_norms, sleep_config, tokens)
from sleepjax import inference

# float32 everywhere; the streaming path differs only in summation order (attention over a
# masked cache, T=1 recurrent GDN steps vs the window's parallel form).
REL_TOL = 1e-4

QWEN_OPTIONS = dict(layer_pattern="GGAG", attn_heads=4, attn_kv_heads=2, attn_output_gate=True,
                    attn_qk_norm=True, rope_fraction=0.5, zero_centered_norms=True,
                    gdn_value_heads=4, gdn_value_head_dim=12, gdn_norm_eps=1e-5)

CASES = {
    "hard-N1": (model_config(), sleep_config(passes=1)),
    "hard-N3": (model_config(), sleep_config(passes=3)),
    "sliding-N1": (model_config(), sleep_config(passes=1, eviction="sliding")),
    "sliding-N3": (model_config(), sleep_config(passes=3, eviction="sliding")),
    "sliding-N3-sleep-sees-prev": (model_config(),
                                   sleep_config(passes=3, eviction="sliding",
                                                sleep_sees_previous_window=True)),
    "hard-N2-loop-1:3-untied": (model_config(tie_embeddings=False),
                                sleep_config(passes=2, loop_range=(1, 3))),
    "hard-N3-loop-1:2-coda-wake-only": (model_config(),
                                        sleep_config(passes=3, loop_range=(1, 2), coda="wake_only")),
    "sliding-N3-loop-0:2-coda-sees-prev": (model_config(),
                                           sleep_config(passes=3, loop_range=(0, 2), eviction="sliding",
                                                        sleep_sees_previous_window=True)),
    # Qwen3.5's options together: GQA, output gate, q/k norm, partial rotary, zero-centred
    # norms, grouped GDN value heads with their own head dim, a separate GDN norm eps
    "qwen-options-hard-N2": (model_config(**QWEN_OPTIONS), sleep_config(passes=2)),
    "qwen-options-sliding-N3": (model_config(**QWEN_OPTIONS, gdn_impl="chunked"),
                                sleep_config(passes=3, eviction="sliding")),
    # blocks without an MLP (lowercase), no positional encoding at all
    "no-positions-no-mlp-sliding-N2": (model_config(position_encoding="none", layer_pattern="AgaG"),
                                sleep_config(passes=2, eviction="sliding")),
    # the training forward and the sleep passes use the chunked op; wake steps the recurrence
    "sliding-N2-chunked": (model_config(gdn_impl="chunked", layer_pattern="GA"),
                           sleep_config(passes=2, eviction="sliding")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_streaming_matches_training_forward(case):
    model_cfg, sleep_cfg = CASES[case]
    params = perturbed_norms(params_for(model_cfg))
    seq = tokens(3 * WINDOW)                                  # T a multiple of L
    state = inference.init_state(model_cfg, sleep_cfg, BATCH)
    stream_logits, _, slept = inference.feed(params, state, seq, model_cfg=model_cfg,
                                             sleep_cfg=sleep_cfg)
    # a sleep fires right after the L-th token of every window
    assert np.flatnonzero(np.asarray(slept)).tolist() == [WINDOW - 1, 2 * WINDOW - 1, 3 * WINDOW - 1]
    full = forward(params, jnp.asarray(seq), model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    assert max_rel_err(stream_logits, full) < REL_TOL
    if case in ("hard-N1", "hard-N3", "sliding-N1", "sliding-N3"):   # T not a multiple of L
        partial = forward(params, jnp.asarray(seq[:, :-1]), model_cfg=model_cfg, sleep_cfg=sleep_cfg)
        assert max_rel_err(stream_logits[:, :-1], partial) < REL_TOL


def test_state_save_restore_mid_stream_continues_identically():
    model_cfg, sleep_cfg = CASES["sliding-N3"]
    params = params_for(model_cfg)
    seq = tokens(3 * WINDOW, seed=1)
    half = 3 * WINDOW // 2                                     # mid-window: caches are non-empty
    state = inference.init_state(model_cfg, sleep_cfg, BATCH)
    first, state, _ = inference.feed(params, state, seq[:, :half], model_cfg=model_cfg,
                                     sleep_cfg=sleep_cfg)
    blob = flax.serialization.msgpack_serialize(flax.serialization.to_state_dict(state))
    template = inference.init_state(model_cfg, sleep_cfg, BATCH)
    restored = flax.serialization.from_state_dict(template, flax.serialization.msgpack_restore(blob))
    assert int(restored.position) == half % WINDOW
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored, state)
    second, _, _ = inference.feed(params, restored, seq[:, half:], model_cfg=model_cfg,
                                  sleep_cfg=sleep_cfg)
    full = forward(params, jnp.asarray(seq), model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    assert max_rel_err(jnp.concatenate([first, second], axis=1), full) < REL_TOL


def test_generate_is_consistent_with_the_forward_and_reports_sleeps():
    model_cfg, sleep_cfg = CASES["hard-N3"]
    params = params_for(model_cfg)
    prompt = tokens(5, seed=2)
    result = inference.generate(params, prompt, 7, model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    out = np.asarray(result.tokens)
    assert out.shape == (BATCH, 12)
    np.testing.assert_array_equal(out[:, :5], prompt)
    assert result.sleep_positions == [WINDOW - 1, 2 * WINDOW - 1, 3 * WINDOW - 1]
    # greedy: every generated token is the argmax of the training forward at the previous position
    full = forward(params, jnp.asarray(out), model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    np.testing.assert_array_equal(np.argmax(np.asarray(full[:, 4:-1]), -1), out[:, 5:])
    assert int(result.state.position) == 12 % WINDOW


def test_wake_step_and_sleep_by_hand_match_step():
    model_cfg, sleep_cfg = CASES["hard-N3"]
    params = params_for(model_cfg)
    seq = tokens(WINDOW + 1, seed=3)
    state = inference.init_state(model_cfg, sleep_cfg, BATCH)
    logits = []
    for i in range(WINDOW + 1):
        if i == WINDOW:
            with pytest.raises(ValueError, match="state.position"):
                inference.sleep(params, inference.init_state(model_cfg, sleep_cfg, BATCH),
                                model_cfg=model_cfg, sleep_cfg=sleep_cfg)
            state = inference.sleep(params, state, model_cfg=model_cfg, sleep_cfg=sleep_cfg)
            assert int(state.position) == 0
        out, state = inference.wake_step(params, state, jnp.asarray(seq[:, i]), model_cfg=model_cfg,
                                         sleep_cfg=sleep_cfg)
        logits.append(out)
    full = forward(params, jnp.asarray(seq), model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    assert max_rel_err(jnp.stack(logits, axis=1), full) < REL_TOL


@pytest.mark.parametrize("case", ["sliding-N3-sleep-sees-prev", "hard-N2-loop-1:3-untied"])
def test_prefill_matches_feed(case):
    # prefill runs whole windows in the parallel form; feed runs every token as a wake step.
    model_cfg, sleep_cfg = CASES[case]
    params = params_for(model_cfg)
    seq = tokens(4 * WINDOW + 2, seed=4)
    start = 1                                  # start mid-window: head, 3 whole windows, tail
    state = inference.init_state(model_cfg, sleep_cfg, BATCH)
    _, state, _ = inference.feed(params, state, seq[:, :start], model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    ref_logits, ref_state, ref_slept = inference.feed(params, state, seq[:, start:],
                                                      model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    logits, new_state, slept = inference.prefill(params, state, seq[:, start:],
                                                 model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    np.testing.assert_array_equal(np.asarray(slept), np.asarray(ref_slept))
    assert np.asarray(slept).sum() == 4
    assert max_rel_err(logits, ref_logits) < REL_TOL
    assert int(new_state.position) == int(ref_state.position) == 2     # 2 tail tokens
    for got, ref in zip(jax.tree.leaves(new_state), jax.tree.leaves(ref_state)):
        if np.any(np.asarray(ref)):           # (all-zero leaves, e.g. cleared caches: exact)
            assert max_rel_err(got, ref) < REL_TOL
        else:
            np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
    with pytest.raises(ValueError, match="tokens"):
        inference.prefill(params, state, seq[:1], model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    with pytest.raises(ValueError, match="state.position"):
        inference.prefill(params, state.replace(position=jnp.int32(WINDOW)), seq,
                          model_cfg=model_cfg, sleep_cfg=sleep_cfg)
