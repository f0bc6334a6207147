"""Each mixer is one function: the window form (no cache) equals the same tokens fed through
its cache, one at a time (the streaming step) or in several parts at later positions."""

import jax
import jax.numpy as jnp
import numpy as np

from support.model import BATCH, max_rel_err, model_config, params_for
from sleepjax.models.attention import attention, zero_kv_cache
from sleepjax.models.gated_deltanet import (GDNCache, causal_conv, gated_deltanet,
                                            zero_conv_history)

SEQ = 6
CFG = model_config(layer_pattern="AG", conv_size=3)


def _inputs(seed):
    return jax.random.normal(jax.random.PRNGKey(seed), (BATCH, SEQ, CFG.d_model))


def _attention_parts(p, x, splits, previous=None):
    """Feed ``x`` through a KV cache of SEQ slots in parts ``x[:, a:b]`` at position ``a``."""
    cache, outs = zero_kv_cache(CFG, BATCH, SEQ), []
    for a, b in zip(splits[:-1], splits[1:]):
        out, cache = attention(p, x[:, a:b], cache, a, CFG, previous)
        outs.append(out)
    return jnp.concatenate(outs, axis=1), cache


@jax.jit
def _attention_cases(p, x, prev_k, prev_v):
    window, window_kv = attention(p, x, None, 0, CFG)
    steps, steps_kv = _attention_parts(p, x, list(range(SEQ + 1)))
    parts, _ = _attention_parts(p, x, [0, 2, 5, SEQ])
    previous = (prev_k, prev_v, jnp.asarray(True))
    window_prev, _ = attention(p, x, None, 0, CFG, previous)
    steps_prev, _ = _attention_parts(p, x, list(range(SEQ + 1)), previous)
    hidden = (prev_k, prev_v, jnp.asarray(False))
    return window, window_kv, steps, steps_kv, parts, window_prev, steps_prev, \
        attention(p, x, None, 0, CFG, hidden)[0]


def test_attention_window_equals_cached_steps_and_parts():
    p = params_for(CFG)["blocks_0"]["attn"]
    x = _inputs(0)
    shape = (BATCH, SEQ - 1, CFG.attn_heads, CFG.attn_head_dim)
    prev_k, prev_v = (jax.random.normal(jax.random.PRNGKey(s), shape) for s in (1, 2))
    window, window_kv, steps, steps_kv, parts, window_prev, steps_prev, hidden = \
        _attention_cases(p, x, prev_k, prev_v)
    assert max_rel_err(steps, window) < 1e-5 and max_rel_err(parts, window) < 1e-5
    for got, want in zip(steps_kv, window_kv):               # the cache holds the rotated k, v
        assert max_rel_err(got, want) < 1e-6
    assert max_rel_err(steps_prev, window_prev) < 1e-5
    assert float(jnp.abs(window_prev - window).max()) > 1e-3        # the previous window is seen
    assert max_rel_err(hidden, window) < 1e-6                       # ... only when valid


@jax.jit
def _gdn_cases(p, x, state):
    window, window_cache = gated_deltanet(p, x, GDNCache(state), 0, CFG)
    cache, steps = GDNCache(state, zero_conv_history(CFG, BATCH)), []
    for t in range(SEQ):
        out, cache = gated_deltanet(p, x[:, t:t + 1], cache, t, CFG)
        steps.append(out)
    first, half = gated_deltanet(p, x[:, :4], GDNCache(state, zero_conv_history(CFG, BATCH)), 0, CFG)
    second, halves = gated_deltanet(p, x[:, 4:], half, 4, CFG)
    return (window, window_cache, jnp.concatenate(steps, axis=1), cache,
            jnp.concatenate([first, second], axis=1), halves)


def test_gated_deltanet_window_equals_cached_steps_and_parts():
    p = params_for(CFG)["blocks_1"]["gdn"]
    x = _inputs(3)
    state = 0.1 * jax.random.normal(jax.random.PRNGKey(4), (BATCH, CFG.gdn_heads, CFG.gdn_head_dim,
                                                          CFG.gdn_value_head_dim))
    window, window_cache, steps, steps_cache, halves, halves_cache = _gdn_cases(p, x, state)
    assert max_rel_err(steps, window) < 1e-5 and max_rel_err(halves, window) < 1e-5
    for cache in (steps_cache, halves_cache):
        assert max_rel_err(cache.fast_weights, window_cache.fast_weights) < 1e-5
        for name in ("q", "k", "v"):                          # the last W-1 pre-conv inputs
            np.testing.assert_allclose(np.asarray(cache.conv[name]),
                                       np.asarray(window_cache.conv[name]), rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(window_cache.fast_weights - state).max()) > 1e-4   # S was written


def test_causal_conv_history_is_the_previous_inputs():
    x = np.random.RandomState(0).randn(BATCH, 5, 3).astype(np.float32)
    w = np.random.RandomState(1).randn(3, 3).astype(np.float32)
    whole, tail = causal_conv(jnp.asarray(x), jnp.asarray(w))
    # by hand: out[t] = sum_j w[j] * x[t - (W-1) + j], zeros before the start
    padded = np.concatenate([np.zeros((BATCH, 2, 3), np.float32), x], axis=1)
    want = sum(padded[:, j:j + 5] * w[j] for j in range(3))
    np.testing.assert_allclose(np.asarray(whole), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(tail), x[:, -2:])
    head, history = causal_conv(jnp.asarray(x[:, :2]), jnp.asarray(w))
    rest, _ = causal_conv(jnp.asarray(x[:, 2:]), jnp.asarray(w), history)
    np.testing.assert_allclose(np.asarray(jnp.concatenate([head, rest], 1)), want, rtol=1e-6, atol=1e-6)


def test_full_attention_baseline_decode_matches_its_forward():
    # the baseline runs the same block loop: a parallel prefill, then cached one-token steps
    from sleepjax.models import baseline
    cfg = model_config(layer_pattern="AG")
    params = baseline.init_baseline_params(cfg, jax.random.PRNGKey(0))
    seq = jnp.asarray(np.random.RandomState(0).randint(0, cfg.vocab_size, (BATCH, SEQ)), jnp.int32)
    full = jax.jit(baseline.baseline_forward, static_argnames="cfg")(params, seq, cfg=cfg)
    logits, cache = baseline.prefill(params, seq[:, :3], cfg, max_len=SEQ)
    decode = jax.jit(baseline.decode_step, static_argnames="cfg")
    steps = [logits]
    for t in range(3, SEQ):
        out, cache = decode(params, cache, seq[:, t], jnp.int32(t), cfg=cfg)
        steps.append(out[:, None])
    assert max_rel_err(jnp.concatenate(steps, axis=1), full) < 1e-5
