"""Streaming inference: wake one token at a time, sleep when the window fills.

What "wake" and "sleep" mean for a user:

* :func:`wake_step` consumes one token per batch row and returns the next-token logits. It runs
  the model's wake pass (:func:`sleepjax.models.sleep_lm.wake_pass`, the training forward's
  code) on one token against the state's caches: attention over the current window's KV cache,
  GDN layers with the T=1 recurrent update from their fast weights and short-conv cache. Its
  cost does not depend on how much context came before: the state has a fixed size.
* :func:`sleep` runs passes 2..N over the window just filled (the stored wake-pass outputs of
  block ``loop_end - 1`` are the input of pass 2) and evicts
  (:func:`sleepjax.models.sleep_lm.sleep`): the KV and conv caches are cleared and the position
  reset; under sliding eviction the last ``L-1`` keys/values are kept as the previous window.
* :func:`step` = :func:`wake_step`, then :func:`sleep` if that token filled the window (a
  ``lax.cond``, one jitted function). :func:`feed` scans :func:`step` over a token block and
  :func:`generate` samples a continuation, reporting where sleeps fired.

Feeding a sequence through :func:`step` gives the same logits as
``SleepLM.apply(params, tokens)`` (``tests/inference/test_stream.py``): training sleeps after a
full window only if more tokens follow, which is exactly when the streaming sleep's effect is
observable.

The state is a :class:`StreamState` pytree of fixed-shape arrays (batch rows move in lockstep);
it round-trips through ``flax.serialization.to_state_dict`` / ``from_state_dict`` (and orbax).
All functions are pure: ``(params, state, inputs) -> (outputs, state)``; the configs are static.
The public calls check their inputs on the host (shapes, and values that are concrete: token
ids, the window position) and raise a ValueError naming the offending argument; the jitted
functions behind them do not.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sleepjax.models import sleep_lm
from sleepjax.models.blocks import attn_layer_names
from sleepjax.models.carry import WindowCarry, fast_weight_caches
from sleepjax.models.config import ModelConfig, SleepConfig
from sleepjax.models.gated_deltanet import GDNCache
from sleepjax.models.validation import (check_open_window, check_stream_token,
                                        check_stream_tokens, tree_differences)
from sleepjax.stream_state import (StreamState, advanced, checked_position, init_state, issue,
                                   stream_state_logical_axes)

__all__ = ["StreamState", "init_state", "stream_state_logical_axes", "wake_step", "sleep", "step",
           "feed", "prefill", "generate", "GenerateResult", "check_params"]

_STATIC = ("model_cfg", "sleep_cfg")


# ----------------------------------------------------------------------------- pure cores

def _wake_step(params, state: StreamState, token, model_cfg, sleep_cfg):
    pos = state.position
    logits, h_loop, caches = sleep_lm.wake_pass(params, token[:, None], state.carry.caches, pos,
                                                model_cfg, sleep_cfg, state.carry)
    loop_input = jax.lax.dynamic_update_slice_in_dim(
        state.loop_input, h_loop.astype(state.loop_input.dtype), pos, 1)
    return logits[:, 0], state.replace(carry=state.carry.replace(caches=caches),
                                       loop_input=loop_input, position=pos + 1)


def _after_sleep(state: StreamState, fast, previous_kv, used) -> StreamState:
    """The state at the next window start: consolidated ``fast``, empty window caches."""
    zeros = functools.partial(jax.tree_util.tree_map, jnp.zeros_like)
    caches = {name: GDNCache(fast[name], zeros(c.conv)) if isinstance(c, GDNCache) else zeros(c)
              for name, c in state.carry.caches.items()}
    return StreamState(carry=WindowCarry(caches, previous_kv, jnp.asarray(True)),
                       loop_input=zeros(state.loop_input), position=jnp.zeros_like(state.position),
                       sleep_passes=used,
                       window_start_fast={name: fast[name] for name in state.window_start_fast})


def _sleep(params, state: StreamState, model_cfg, sleep_cfg):
    kv = {name: tuple(state.carry.caches[name]) for name in attn_layer_names(model_cfg)}
    fast, previous_kv, used = sleep_lm.sleep(params, state.loop_input, state.carry.fast_weights,
                                             kv, model_cfg, sleep_cfg, state.carry,
                                             state.window_start_fast)
    return _after_sleep(state, fast, previous_kv, used)


def _step(params, state, token, model_cfg, sleep_cfg):
    logits, state = _wake_step(params, state, token, model_cfg, sleep_cfg)
    full = state.position == sleep_cfg.window
    state = jax.lax.cond(full, lambda s: _sleep(params, s, model_cfg, sleep_cfg), lambda s: s, state)
    return logits, state, full


def _feed(params, state, tokens, model_cfg, sleep_cfg):
    def body(state, token):
        logits, state, slept = _step(params, state, token, model_cfg, sleep_cfg)
        return state, (logits, slept)
    state, (logits, slept) = jax.lax.scan(body, state, tokens.T)
    return logits.swapaxes(0, 1), state, slept


def _prefill_windows(params, state, tokens, model_cfg, sleep_cfg):
    """Whole windows ``tokens [B, n*L]`` from a window start, in the parallel (training) form.

    A window start has empty caches (``_sleep`` zeroes them), so after n windows that each
    slept only the fast weights and the eviction's hand-off change.
    """
    start = state.carry.replace(caches=fast_weight_caches(state.carry.fast_weights))
    carry, logits, used = sleep_lm.sleep_over_windows(params, start, tokens, model_cfg, sleep_cfg)
    return logits, _after_sleep(state, carry.fast_weights, carry.previous_kv, used[:, -1])


def _sample(logits, rng, temperature):
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    # Shifted so the largest logit is 0: a small temperature then sends the others towards -inf
    # instead of overflowing the largest to inf (inf - inf = nan in the softmax).
    shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
    return jax.random.categorical(rng, shifted / temperature, axis=-1).astype(jnp.int32)


def _generate_loop(params, state, logits, rng, model_cfg, sleep_cfg, max_new_tokens, temperature):
    def body(carry, _):
        state, logits, rng = carry
        rng, sub = jax.random.split(rng)
        token = _sample(logits, sub, temperature)
        logits, state, slept = _step(params, state, token, model_cfg, sleep_cfg)
        return (state, logits, rng), (token, slept)
    (state, logits, _), (tokens, slept) = jax.lax.scan(body, (state, logits, rng), None,
                                                        length=max_new_tokens)
    return tokens.T, state, slept, logits


_wake_step_jit = jax.jit(_wake_step, static_argnames=_STATIC)
_sleep_jit = jax.jit(_sleep, static_argnames=_STATIC)
_step_jit = jax.jit(_step, static_argnames=_STATIC)
_feed_jit = jax.jit(_feed, static_argnames=_STATIC)
_prefill_windows_jit = jax.jit(_prefill_windows, static_argnames=_STATIC)
_generate_loop_jit = jax.jit(_generate_loop, static_argnames=_STATIC + ("max_new_tokens", "temperature"))


# ----------------------------------------------------------------------------- host-side checks

# The smallest positive float32 that is not subnormal: XLA flushes subnormals to zero, so a
# smaller temperature would divide the logits by 0.
MIN_TEMPERATURE = float(np.finfo(np.float32).tiny)


def _check_temperature(temperature) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)) \
            or not np.isfinite(temperature) or temperature < 0 \
            or 0 < temperature < MIN_TEMPERATURE:
        raise ValueError(f"temperature: must be 0 (greedy) or a finite number >= "
                         f"{MIN_TEMPERATURE:.3g} (float32's smallest normal), got {temperature!r}")


@functools.lru_cache(maxsize=16)
def _param_reference(model_cfg):
    """``(abstract params of init_params(model_cfg), treedef, leaf shapes)``; traced once."""
    abstract = jax.eval_shape(lambda: sleep_lm.init_params(model_cfg, jax.random.PRNGKey(0)))
    leaves, treedef = jax.tree_util.tree_flatten(abstract)
    return abstract, treedef, [tuple(leaf.shape) for leaf in leaves]


def check_params(params, model_cfg: ModelConfig) -> None:
    """``params`` has the tree and shapes of ``init_params(model_cfg)`` (any dtype: a checkpoint
    may be loaded in bfloat16); ValueError naming the mismatched entries otherwise. Host-side:
    one flatten and a shape comparison in the common case."""
    abstract, treedef, shapes = _param_reference(model_cfg)
    leaves, got_def = jax.tree_util.tree_flatten(params)
    if got_def == treedef and [tuple(np.shape(leaf)) for leaf in leaves] == shapes:
        return
    problems = tree_differences(params, abstract, dtypes=False)
    more = f" ... and {len(problems) - 4} more" if len(problems) > 4 else ""
    raise ValueError(f"params: do not match the parameter tree of model_cfg (d_model="
                     f"{model_cfg.d_model}, layer_pattern={model_cfg.layer_pattern!r}, vocab_size="
                     f"{model_cfg.vocab_size}): " + "; ".join(problems[:4]) + more)


# ----------------------------------------------------------------------------- public API

def wake_step(params, state: StreamState, token, *, model_cfg: ModelConfig, sleep_cfg: SleepConfig):
    """Consume one token per stream (``token [B]`` int) -> ``(logits [B, vocab] f32, state)``.

    Requires ``state.position < L`` (a window that is not full); :func:`step` guarantees it by
    sleeping as soon as a window fills. Jit-compiled (configs are static).
    """
    position = checked_position(state, model_cfg, sleep_cfg)
    check_params(params, model_cfg)
    check_stream_token(token, state.loop_input.shape[0], model_cfg.vocab_size)
    check_open_window(position, sleep_cfg.window, "wake_step")
    logits, state = _wake_step_jit(params, state, token, model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    return logits, issue(model_cfg, sleep_cfg, advanced(position, 1, None), state)


def sleep(params, state: StreamState, *, model_cfg: ModelConfig, sleep_cfg: SleepConfig) -> StreamState:
    """Consolidate the full window into the fast weights (passes 2..N), then evict.

    Requires a full window (``state.position == L``); with N = 1 only the eviction happens.
    """
    position = checked_position(state, model_cfg, sleep_cfg)
    check_params(params, model_cfg)
    if position is not None and position != sleep_cfg.window:
        raise ValueError(f"state.position: sleep needs a full window (position == window = "
                         f"{sleep_cfg.window}), got position {position}")
    state = _sleep_jit(params, state, model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    return issue(model_cfg, sleep_cfg, None if position is None else 0, state)


def step(params, state: StreamState, token, *, model_cfg: ModelConfig, sleep_cfg: SleepConfig):
    """:func:`wake_step`, then :func:`sleep` if this token filled the window.

    Returns ``(logits [B, vocab], state, slept)`` where ``slept`` is a bool scalar.
    """
    position = checked_position(state, model_cfg, sleep_cfg)
    check_params(params, model_cfg)
    check_stream_token(token, state.loop_input.shape[0], model_cfg.vocab_size)
    check_open_window(position, sleep_cfg.window, "step")
    logits, state, slept = _step_jit(params, state, token, model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    return logits, issue(model_cfg, sleep_cfg, advanced(position, 1, sleep_cfg), state), slept


def feed(params, state: StreamState, tokens, *, model_cfg: ModelConfig, sleep_cfg: SleepConfig):
    """:func:`step` over ``tokens [B, T]`` (one jitted scan).

    Returns ``(logits [B, T, vocab], state, slept [T] bool)``; ``slept[i]`` is True when a sleep
    fired right after token ``i``.
    """
    position = checked_position(state, model_cfg, sleep_cfg)
    check_params(params, model_cfg)
    check_stream_tokens(tokens, state.loop_input.shape[0], model_cfg.vocab_size)
    check_open_window(position, sleep_cfg.window, "feed")
    logits, state, slept = _feed_jit(params, state, jnp.asarray(tokens), model_cfg=model_cfg,
                                     sleep_cfg=sleep_cfg)
    position = advanced(position, tokens.shape[1], sleep_cfg)
    return logits, issue(model_cfg, sleep_cfg, position, state), slept


def prefill(params, state: StreamState, tokens, *, model_cfg: ModelConfig, sleep_cfg: SleepConfig):
    """:func:`feed` with every whole window computed in parallel: same results, fewer steps.

    Tokens up to the next window boundary and the tail after the last whole window go
    through :func:`feed` token by token; each whole window in between runs as one parallel
    wake pass plus its sleep (the training forward's code), instead of L sequential wake
    steps. Returns ``(logits [B, T, vocab], state, slept [T] bool)`` like :func:`feed`.
    ``state.position`` must be concrete (not traced): it decides where windows start.
    """
    if isinstance(getattr(state, "position", None), jax.core.Tracer):
        raise ValueError("state.position: prefill needs a concrete position (call it outside jit)")
    position = checked_position(state, model_cfg, sleep_cfg)
    check_params(params, model_cfg)
    check_stream_tokens(tokens, state.loop_input.shape[0], model_cfg.vocab_size)
    check_open_window(position, sleep_cfg.window, "prefill")
    window = sleep_cfg.window
    tokens = jnp.asarray(tokens)
    total = tokens.shape[1]
    head = min(total, (window - position) % window)               # finish the open window
    whole = (total - head) // window * window
    pieces = []                                                   # (logits, slept) per part
    if head:
        out, state, slept = _feed_jit(params, state, tokens[:, :head], model_cfg=model_cfg,
                                      sleep_cfg=sleep_cfg)
        pieces.append((out, np.asarray(slept)))
    if whole:
        out, state = _prefill_windows_jit(params, state, tokens[:, head:head + whole],
                                          model_cfg=model_cfg, sleep_cfg=sleep_cfg)
        pieces.append((out, np.arange(1, whole + 1) % window == 0))
    if head + whole < total:
        out, state, slept = _feed_jit(params, state, tokens[:, head + whole:], model_cfg=model_cfg,
                                      sleep_cfg=sleep_cfg)
        pieces.append((out, np.asarray(slept)))
    logits, slept = zip(*pieces)
    state = issue(model_cfg, sleep_cfg, advanced(position, total, sleep_cfg), state)
    return jnp.concatenate(logits, axis=1), state, jnp.asarray(np.concatenate(slept))


class GenerateResult(NamedTuple):
    tokens: jax.Array            # [B, P + max_new_tokens]: the prompt followed by the samples
    sleep_positions: list        # indices i into `tokens` after which a sleep fired
    state: StreamState           # the state after consuming every returned token


def generate(params, prompt, max_new_tokens: int, *, model_cfg: ModelConfig, sleep_cfg: SleepConfig,
             rng=None, temperature: float = 0.0, state: StreamState | None = None) -> GenerateResult:
    """Consume ``prompt [B, P]`` (:func:`prefill`), then sample ``max_new_tokens`` tokens.

    ``temperature == 0`` is greedy; otherwise ``rng`` is required. Sleeps fire automatically
    whenever a window fills, during the prompt and during generation. ``state`` continues an
    earlier stream (default: a fresh one); it is checked against the configs like every call's.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
            or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: must be an int >= 0, got {max_new_tokens!r}")
    _check_temperature(temperature)
    if temperature > 0 and rng is None:
        raise ValueError("rng: a PRNG key is required when temperature > 0")
    prompt = jnp.asarray(prompt)
    if state is None:
        state = init_state(model_cfg, sleep_cfg, prompt.shape[0] if prompt.ndim == 2 else 1)
    logits, state, slept_prompt = prefill(params, state, prompt, model_cfg=model_cfg,
                                          sleep_cfg=sleep_cfg)
    position = checked_position(state, model_cfg, sleep_cfg)     # known: prefill returned it
    rng = jax.random.PRNGKey(0) if rng is None else rng
    new_tokens, state, slept_new, _ = _generate_loop_jit(
        params, state, logits[:, -1], rng, model_cfg=model_cfg, sleep_cfg=sleep_cfg,
        max_new_tokens=int(max_new_tokens), temperature=float(temperature))
    state = issue(model_cfg, sleep_cfg, advanced(position, max_new_tokens, sleep_cfg), state)
    slept = np.concatenate([np.asarray(slept_prompt), np.asarray(slept_new)])
    return GenerateResult(tokens=jnp.concatenate([prompt.astype(jnp.int32), new_tokens], axis=1),
                          sleep_positions=[int(i) for i in np.flatnonzero(slept)], state=state)
