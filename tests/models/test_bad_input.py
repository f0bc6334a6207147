"""Bad input: a ValueError naming the field, raised before any compute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support.model import BATCH, VOCAB, WINDOW, model_config, params_for, sleep_config, tokens
from sleepjax import inference, stream_state
from sleepjax.models import ModelConfig, SleepConfig, SleepLM, validate_tokens


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


@pytest.mark.parametrize("window", [0, -3, 2.5, True])
def test_window_must_be_a_positive_int(window):
    with pytest.raises(ValueError, match=r"sleep\.window"):
        SleepConfig(window=window)


@pytest.mark.parametrize("passes", [0, -1, 1.0])
def test_passes_must_be_at_least_one(passes):
    with pytest.raises(ValueError, match=r"sleep\.passes"):
        SleepConfig(passes=passes)


@pytest.mark.parametrize("pattern", ["AXG", "", "A G", "gX"])
def test_layer_pattern(pattern):
    with pytest.raises(ValueError, match=r"model\.layer_pattern"):
        ModelConfig(vocab_size=VOCAB, layer_pattern=pattern)


@pytest.mark.parametrize("pattern", ["AAAA", "aaA"])
def test_attention_only_models_load_but_cannot_sleep(pattern):
    model_cfg = ModelConfig(vocab_size=VOCAB, layer_pattern=pattern)      # e.g. a Llama checkpoint
    with pytest.raises(ValueError, match=r"model\.layer_pattern: needs at least one 'G' block"):
        inference.init_state(model_cfg, sleep_config(), BATCH)


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


@pytest.mark.parametrize("field, value, match", [
    ("attn_kv_heads", 3, "must divide attn_heads=4"),
    ("attn_kv_heads", -1, "int >= 0"),
    ("gdn_value_heads", 6, "multiple of gdn_heads=4"),
    ("gdn_value_head_dim", 1.5, "int >= 0"),
    ("rope_fraction", 0.0, r"in \(0, 1\]"),
    ("rope_fraction", 0.03, "even number >= 2"),      # int(64 * 0.03) = 1 rotated feature
    ("position_encoding", "alibi", "one of"),
    ("attn_output_gate", 1, "bool"),
    ("zero_centered_norms", "yes", "bool"),
    ("gdn_norm_eps", 0.0, "positive"),
])
def test_architecture_option_fields(field, value, match):
    with pytest.raises(ValueError, match=rf"model\.{field}: .*{match}"):
        ModelConfig(vocab_size=VOCAB, **{field: value})
    with pytest.raises(ValueError, match=r"model\.gdn_value_head_dim: set either"):
        ModelConfig(vocab_size=VOCAB, gdn_expand_v=2, gdn_value_head_dim=32)


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


# ----------------------------------------------------------------------------- streaming state

def _streaming(**sleep_overrides):
    model_cfg, sleep_cfg = model_config(), sleep_config(**sleep_overrides)
    return params_for(model_cfg), model_cfg, sleep_cfg, inference.init_state(model_cfg, sleep_cfg, BATCH)


@pytest.mark.parametrize("bad_id", [-1, VOCAB])
@pytest.mark.parametrize("call", ["wake_step", "step"])
def test_single_token_ids_outside_the_vocabulary(call, bad_id):
    params, model_cfg, sleep_cfg, state = _streaming()
    token = np.array([1, bad_id], np.int32)
    with pytest.raises(ValueError, match=r"token: ids must lie in \[0, vocab_size=11\)"):
        getattr(inference, call)(params, state, token, model_cfg=model_cfg, sleep_cfg=sleep_cfg)


def test_wake_step_past_the_window_end_is_refused():
    params, model_cfg, sleep_cfg, state = _streaming()
    for i in range(WINDOW):                                   # fill the window without sleeping
        _, state = inference.wake_step(params, state, jnp.full((BATCH,), i, jnp.int32),
                                       model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    token = jnp.zeros((BATCH,), jnp.int32)
    for call in ("wake_step", "step"):
        with pytest.raises(ValueError, match=r"state.position: the window is full \(position 4 =="
                                             r" window 4\); call inference.sleep"):
            getattr(inference, call)(params, state, token, model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    with pytest.raises(ValueError, match="state.position: the window is full"):
        inference.feed(params, state, tokens(3), model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    state = inference.sleep(params, state, model_cfg=model_cfg, sleep_cfg=sleep_cfg)   # the remedy
    _, state = inference.wake_step(params, state, token, model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    assert int(state.position) == 1
    with pytest.raises(ValueError, match=r"state.position: must be in \[0, window = 4\)"):
        inference.wake_step(params, state.replace(position=jnp.int32(WINDOW + 3)), token,
                            model_cfg=model_cfg, sleep_cfg=sleep_cfg)


def _every_call(params, state, model_cfg, sleep_cfg):
    """Each public streaming call on ``state`` (a lambda per call, token batch from the state)."""
    batch = state.loop_input.shape[0]
    token, block = jnp.zeros((batch,), jnp.int32), np.zeros((batch, 3), np.int32)
    kw = dict(model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    return {"wake_step": lambda: inference.wake_step(params, state, token, **kw),
            "step": lambda: inference.step(params, state, token, **kw),
            "feed": lambda: inference.feed(params, state, block, **kw),
            "prefill": lambda: inference.prefill(params, state, block, **kw),
            "sleep": lambda: inference.sleep(params, state, **kw),
            "generate": lambda: inference.generate(params, block, 1, state=state, **kw)}


@pytest.mark.parametrize("built_for,match", [
    (dict(window=2 * WINDOW), r"state: built for window L=8 \(loop_input \(2, 8, 32\)\), but "
                              r"sleep_cfg.window = 4"),
    (dict(eviction="sliding"),
     r"state: its entries do not match .*unexpected \[\"state\.carry\.previous_kv\['blocks_0'\]\[0\]"),
    (dict(model=dict(layer_pattern="AGG")),
     r"state: its entries do not match .*missing \[.*\"state\.carry\.caches\['blocks_3'\]\.conv"),
    (dict(model=dict(dtype="bfloat16")),
     r"state\.carry\.caches\['blocks_0'\]\.keys: shape \(2, 4, 2, 8\) bfloat16, but model_cfg / "
     r"sleep_cfg .* needs \(2, 4, 2, 8\) float32"),
])
def test_a_state_built_for_other_configs_is_refused_by_every_call(built_for, match):
    params, model_cfg, sleep_cfg, _ = _streaming()
    other_model = model_config(**built_for.pop("model", {}))
    other = inference.init_state(other_model, sleep_config(**built_for), BATCH)
    for call, run in _every_call(params, other, model_cfg, sleep_cfg).items():
        with pytest.raises(ValueError, match=match):
            run()


def test_a_state_mixing_batch_sizes_names_the_leaf():
    params, model_cfg, sleep_cfg, state = _streaming()
    other = inference.init_state(model_cfg, sleep_cfg, BATCH + 1)
    fast = dict(state.carry.caches, blocks_1=state.carry.caches["blocks_1"]._replace(
        fast_weights=other.fast_weights["blocks_1"]))
    mixed = state.replace(carry=state.carry.replace(caches=fast))
    for call, run in _every_call(params, mixed, model_cfg, sleep_cfg).items():
        with pytest.raises(ValueError, match=r"state\.carry\.caches\['blocks_1'\]\.fast_weights: shape \(3, 2, 8, 8\)"
                                             r" float32, but .* at batch 2 needs \(2, 2, 8, 8\)"):
            run()
    # a whole state of another batch is consistent: the token batch must then match it
    with pytest.raises(ValueError, match=r"token: must have shape \[batch=3\]"):
        inference.wake_step(params, other, jnp.zeros((BATCH,), jnp.int32), model_cfg=model_cfg,
                            sleep_cfg=sleep_cfg)
    with pytest.raises(ValueError, match="state: must be a StreamState"):
        inference.step(params, {"position": 0}, jnp.zeros((BATCH,), jnp.int32),
                       model_cfg=model_cfg, sleep_cfg=sleep_cfg)


def test_the_position_known_on_the_host_follows_every_call():
    # the public calls remember each state they return (with its position) to skip re-checking
    # it; that record must agree with the device value after every kind of call
    params, model_cfg, sleep_cfg, state = _streaming(passes=2)
    kw = dict(model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    token = jnp.ones((BATCH,), jnp.int32)
    calls = [lambda s: inference.wake_step(params, s, token, **kw)[1],
             lambda s: inference.step(params, s, token, **kw)[1],
             lambda s: inference.feed(params, s, tokens(3), **kw)[1],
             lambda s: inference.prefill(params, s, tokens(6), **kw)[1],
             lambda s: inference.generate(params, tokens(3), 2, state=s, **kw).state]
    for call in calls + calls[::-1]:
        state = call(state)
        assert stream_state.checked_position(state, model_cfg, sleep_cfg) == int(state.position)
    while int(state.position) < WINDOW:
        state = inference.wake_step(params, state, token, **kw)[1]
    with pytest.raises(ValueError, match="state.position: the window is full"):
        inference.step(params, state, token, **kw)
    state = inference.sleep(params, state, **kw)
    assert stream_state.checked_position(state, model_cfg, sleep_cfg) == int(state.position) == 0
    # a returned state is still checked against other configs
    with pytest.raises(ValueError, match=r"state: built for window L=4 .* sleep_cfg.window = 8"):
        inference.wake_step(params, state, token, model_cfg=model_cfg,
                            sleep_cfg=sleep_config(passes=2, window=2 * WINDOW))
