"""Bad input: a ValueError naming the field, raised before any compute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest_model import BATCH, VOCAB, WINDOW, model_config, params_for, sleep_config, tokens
from sleepjax import inference
from sleepjax.models import ModelConfig, SleepConfig, SleepLM, masked_cross_entropy, validate_tokens


@pytest.mark.parametrize("bad_id", [-1, VOCAB])
def test_token_ids_outside_the_vocabulary(bad_id):
    seq = tokens(6)
    seq[1, 3] = bad_id
    with pytest.raises(ValueError, match=r"tokens: ids must lie in \[0, vocab_size=11\)"):
        validate_tokens(seq, VOCAB)
    model = SleepLM(model_config(), sleep_config())
    with pytest.raises(ValueError, match="tokens"):
        model.init(jax.random.PRNGKey(0), seq)
    with pytest.raises(ValueError, match="tokens"):
        model.apply({"params": params_for(model_config())}, seq)


def test_token_array_shape_and_dtype():
    with pytest.raises(ValueError, match="tokens: must have shape"):
        validate_tokens(np.zeros((6,), np.int32), VOCAB)
    with pytest.raises(ValueError, match="tokens: must be an integer array"):
        validate_tokens(np.zeros((2, 6), np.float32), VOCAB)


def test_mask_shape_must_match_tokens():
    with pytest.raises(ValueError, match=r"mask: shape \(2, 5\) differs"):
        validate_tokens(tokens(6), VOCAB, mask=np.ones((2, 5)))
    validate_tokens(tokens(6), VOCAB, mask=np.ones((2, 6)))          # fine
    with pytest.raises(ValueError, match="mask"):
        masked_cross_entropy(jnp.zeros((2, 6, VOCAB)), jnp.zeros((2, 6), jnp.int32), jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="targets"):
        masked_cross_entropy(jnp.zeros((2, 6, VOCAB)), jnp.zeros((2, 5), jnp.int32))


@pytest.mark.parametrize("window", [0, -3, 2.5, True])
def test_window_must_be_a_positive_int(window):
    with pytest.raises(ValueError, match=r"sleep\.window"):
        SleepConfig(window=window)


@pytest.mark.parametrize("passes", [0, -1, 1.0])
def test_passes_must_be_at_least_one(passes):
    with pytest.raises(ValueError, match=r"sleep\.passes"):
        SleepConfig(passes=passes)


@pytest.mark.parametrize("pattern", ["AXG", "agag", "", "AAAA", "A G"])
def test_layer_pattern(pattern):
    with pytest.raises(ValueError, match=r"model\.layer_pattern"):
        ModelConfig(vocab_size=VOCAB, layer_pattern=pattern)


def test_loop_range_is_checked_against_the_pattern():
    with pytest.raises(ValueError, match=r"sleep\.loop_range"):
        SleepConfig(loop_range=(2, 1))
    model = SleepLM(model_config(), sleep_config(loop_range=(0, 9)))
    with pytest.raises(ValueError, match=r"sleep\.loop_range: end must be <= the number of layers"):
        model.init(jax.random.PRNGKey(0), tokens(6))
    # only attention blocks in the looped range: sleep could not change the fast weights
    with pytest.raises(ValueError, match=r"sleep\.loop_range: blocks 0\.\.0"):
        inference.init_state(model_config(), sleep_config(passes=2, loop_range=(0, 1)), BATCH)


def test_other_config_fields():
    with pytest.raises(ValueError, match=r"model\.attn_head_dim"):
        ModelConfig(vocab_size=VOCAB, attn_head_dim=7)
    with pytest.raises(ValueError, match=r"sleep\.eviction"):
        SleepConfig(eviction="soft")
    with pytest.raises(ValueError, match=r"model\.dtype"):
        ModelConfig(vocab_size=VOCAB, dtype="float16")


def test_streaming_inputs():
    model_cfg, sleep_cfg = model_config(), sleep_config()
    params = params_for(model_cfg)
    state = inference.init_state(model_cfg, sleep_cfg, BATCH)
    with pytest.raises(ValueError, match="batch_size"):
        inference.init_state(model_cfg, sleep_cfg, 0)
    with pytest.raises(ValueError, match=r"token: must have shape \[batch=2\]"):
        inference.wake_step(params, state, jnp.zeros((3,), jnp.int32), model_cfg=model_cfg,
                            sleep_cfg=sleep_cfg)
    with pytest.raises(ValueError, match="token: must be integer"):
        inference.step(params, state, jnp.zeros((BATCH,)), model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    with pytest.raises(ValueError, match="tokens"):
        inference.feed(params, state, np.full((BATCH, 3), VOCAB, np.int32), model_cfg=model_cfg,
                       sleep_cfg=sleep_cfg)
    with pytest.raises(ValueError, match="state.position"):
        inference.sleep(params, state, model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    with pytest.raises(ValueError, match="max_new_tokens"):
        inference.generate(params, tokens(3), -1, model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    with pytest.raises(ValueError, match="rng"):
        inference.generate(params, tokens(3), 2, model_cfg=model_cfg, sleep_cfg=sleep_cfg,
                           temperature=1.0)
