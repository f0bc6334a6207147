"""generate's temperature: finite, and 0 (greedy) or at least float32's smallest normal; params
that do not fit the model config are refused naming the mismatched entries, by every call."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from sleepjax import inference
from support.model import BATCH, model_config, params_for, sleep_config, tokens


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), -1.0, 1e-38, True, "1"])
def test_bad_temperatures_are_refused(temperature):
    model_cfg, sleep_cfg = model_config(), sleep_config()
    with pytest.raises(ValueError, match=r"^temperature: must be 0 \(greedy\) or a finite number"):
        inference.generate(params_for(model_cfg), tokens(3), 2, model_cfg=model_cfg,
                           sleep_cfg=sleep_cfg, temperature=temperature, rng=jax.random.PRNGKey(0))


def test_a_tiny_temperature_samples_the_greedy_tokens():
    """Dividing unshifted logits by 2e-38 overflows the largest to inf (garbage tokens); the
    shifted logits leave the argmax at 0 and push the others to -inf."""
    model_cfg, sleep_cfg = model_config(), sleep_config()
    params = params_for(model_cfg)
    greedy = inference.generate(params, tokens(3), 5, model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    cold = inference.generate(params, tokens(3), 5, model_cfg=model_cfg, sleep_cfg=sleep_cfg,
                              temperature=2e-38, rng=jax.random.PRNGKey(1))
    np.testing.assert_array_equal(np.asarray(cold.tokens), np.asarray(greedy.tokens))


def test_params_that_do_not_fit_the_config_are_named():
    model_cfg, sleep_cfg = model_config(), sleep_config()
    params = params_for(model_cfg)
    missing = {k: v for k, v in params.items() if k != "final_norm"}
    with pytest.raises(ValueError, match=r"^params: do not match the parameter tree of model_cfg "
                                         r"\(d_model=32.*\['final_norm'\]\['scale'\] missing"):
        inference.generate(missing, tokens(3), 2, model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    wider = params_for(model_config(d_model=48))
    state = inference.init_state(model_cfg, sleep_cfg, BATCH)
    for call in (lambda p: inference.feed(p, state, tokens(3), model_cfg=model_cfg,
                                          sleep_cfg=sleep_cfg),
                 lambda p: inference.wake_step(p, state, tokens(1)[:, 0], model_cfg=model_cfg,
                                               sleep_cfg=sleep_cfg)):
        with pytest.raises(ValueError, match=r"\['blocks_0'\]\['attn'\]\['wk'\] is \(48, 16\), "
                                             r"needs \(32, 16\)"):
            call(wider)
