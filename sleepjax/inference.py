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
``SleepLM.apply(params, tokens)`` (``tests/test_inference_stream.py``): training sleeps after a
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
import weakref
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from sleepjax.models import sleep_lm
from sleepjax.models.attention import KVCache, zero_kv_cache
from sleepjax.models.blocks import attn_layer_names, gdn_layer_names, zero_fast_weights
from sleepjax.models.config import ModelConfig, SleepConfig
from sleepjax.models.gated_deltanet import GDNCache, zero_conv_history
from sleepjax.models.layers import compute_dtype
from sleepjax.models.validation import (check_configs, check_open_window, check_stream_token,
                                        check_stream_tokens, check_tree_shapes, tree_differences,
                                        tree_layout)

_STATIC = ("model_cfg", "sleep_cfg")


@flax.struct.dataclass
class StreamState:
    """Everything a streaming model remembers between tokens (all arrays, fixed shapes).

    Attributes:
      fast_weights: ``{blocks_i: [B, H, K, V] float32}`` per GDN layer; the only long-term memory.
      conv_cache: ``{blocks_i: {q, k: [B, conv_size-1, HK], v: [B, conv_size-1, HV]}}`` pre-conv
        q, k, v of the window's last tokens per GDN layer (zeros at a window start).
      kv_cache: ``{blocks_i: (k, v) [B, L, H, D]}`` the current window's rotated keys and values
        per attention layer; slots ``>= position`` are unused.
      prev_kv: sliding eviction only: ``{blocks_i: (k, v) [B, L-1, H, D]}`` the previous window's
        last ``L-1`` tokens (keys rotated to positions ``-(L-1)..-1``); ``{}`` under hard eviction.
      has_prev: bool scalar, True once a window boundary has been crossed.
      loop_input: ``[B, L, d]`` the wake pass's outputs of block ``loop_end-1`` for this window,
        the input of the first sleep pass.
      window_start_fast: ``{blocks_i: [B, Hv, K, V]}`` the fast weights at this window's start
        of the coda's GDN layers, which the sleep re-runs from them (``sleep.coda``); ``{}``
        when there is no re-run coda.
      position: int32 scalar, number of tokens of the current window already consumed.
    """

    fast_weights: dict
    conv_cache: dict
    kv_cache: dict
    prev_kv: dict
    has_prev: jax.Array
    loop_input: jax.Array
    position: jax.Array
    window_start_fast: dict = flax.struct.field(default_factory=dict)


def init_state(model_cfg: ModelConfig, sleep_cfg: SleepConfig, batch_size: int) -> StreamState:
    """A fresh state (S = 0, empty caches, position 0) for ``batch_size`` streams."""
    check_configs(model_cfg, sleep_cfg)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: must be a positive int, got {batch_size!r}")
    window = sleep_cfg.window
    fast = zero_fast_weights(model_cfg, batch_size)
    return _issue(model_cfg, sleep_cfg, 0, StreamState(
        fast_weights=fast,
        conv_cache={name: zero_conv_history(model_cfg, batch_size)
                    for name in gdn_layer_names(model_cfg)},
        kv_cache={name: tuple(zero_kv_cache(model_cfg, batch_size, window))
                  for name in attn_layer_names(model_cfg)},
        prev_kv=sleep_lm.zero_previous_window_kv(model_cfg, sleep_cfg, batch_size),
        has_prev=jnp.asarray(False),
        loop_input=jnp.zeros((batch_size, window, model_cfg.d_model), compute_dtype(model_cfg)),
        position=jnp.asarray(0, jnp.int32),
        window_start_fast={name: fast[name]
                           for name in sleep_lm.coda_layer_names(model_cfg, sleep_cfg)},
    ))


# ----------------------------------------------------------------------------- pure cores

def _layer_caches(state: StreamState):
    """The state as the per-layer caches of :func:`sleepjax.models.blocks.run_blocks`."""
    caches = {name: KVCache(*kv) for name, kv in state.kv_cache.items()}
    caches.update({name: GDNCache(s, state.conv_cache[name]) for name, s in state.fast_weights.items()})
    return caches


def _wake_step(params, state: StreamState, token, model_cfg, sleep_cfg):
    pos = state.position
    logits, h_loop, caches = sleep_lm.wake_pass(params, token[:, None], _layer_caches(state), pos,
                                                model_cfg, sleep_cfg, state.prev_kv or None,
                                                state.has_prev)
    loop_input = jax.lax.dynamic_update_slice_in_dim(
        state.loop_input, h_loop.astype(state.loop_input.dtype), pos, 1)
    state = state.replace(
        fast_weights={name: caches[name].fast_weights for name in state.fast_weights},
        conv_cache={name: caches[name].conv for name in state.conv_cache},
        kv_cache={name: tuple(caches[name]) for name in state.kv_cache},
        loop_input=loop_input, position=pos + 1)
    return logits[:, 0], state


def _sleep(params, state: StreamState, model_cfg, sleep_cfg):
    fast, prev_kv = sleep_lm.sleep(params, state.loop_input, state.fast_weights, state.kv_cache,
                                   model_cfg, sleep_cfg, state.prev_kv or None, state.has_prev,
                                   state.window_start_fast)
    zeros = functools.partial(jax.tree_util.tree_map, jnp.zeros_like)
    return StreamState(fast_weights=fast, conv_cache=zeros(state.conv_cache),
                       kv_cache=zeros(state.kv_cache), prev_kv=prev_kv,
                       has_prev=jnp.asarray(True), loop_input=zeros(state.loop_input),
                       position=jnp.zeros_like(state.position),
                       window_start_fast={name: fast[name] for name in state.window_start_fast})


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
    (fast, prev_kv, has_prev), logits = sleep_lm.sleep_over_windows(
        params, (state.fast_weights, state.prev_kv, state.has_prev), tokens, model_cfg, sleep_cfg)
    return logits, state.replace(fast_weights=fast, prev_kv=prev_kv, has_prev=has_prev,
                                 window_start_fast={name: fast[name]
                                                    for name in state.window_start_fast})


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


@functools.lru_cache(maxsize=64)
def _state_layout(model_cfg, sleep_cfg, batch_size):
    """The layout of the :class:`StreamState` these configs need (traced once, nothing allocated)."""
    return tree_layout(jax.eval_shape(lambda: init_state(model_cfg, sleep_cfg, batch_size)))


def _check_state(state, model_cfg, sleep_cfg):
    """``state`` has exactly the layout, shapes and dtypes ``init_state`` gives for the configs."""
    if not isinstance(state, StreamState):
        raise ValueError(f"state: must be a StreamState (see inference.init_state), "
                         f"got {type(state).__name__}")
    check_configs(model_cfg, sleep_cfg)
    loop_shape = tuple(getattr(state.loop_input, "shape", ()))
    if len(loop_shape) != 3:
        raise ValueError(f"state.loop_input: must have shape [batch, window, d_model], got {loop_shape}")
    batch_size, window = loop_shape[:2]
    if window != sleep_cfg.window:
        raise ValueError(f"state: built for window L={window} (loop_input {loop_shape}), but "
                         f"sleep_cfg.window = {sleep_cfg.window}")
    check_tree_shapes("state", state, _state_layout(model_cfg, sleep_cfg, batch_size),
                      lambda: f"model_cfg / sleep_cfg (window={sleep_cfg.window}, "
                      f"eviction={sleep_cfg.eviction!r}, layer_pattern={model_cfg.layer_pattern!r}, "
                      f"dtype={model_cfg.dtype}) at batch {batch_size}")


# A state returned by this module's public calls fits their configs by construction, and its
# position is known on the host. Remembering both per live state object lets the next call skip
# the layout check and read no device value, so a wake step's host cost stays flat (a few us).
# StreamState is immutable (``replace`` makes a new, unremembered object that is checked).
_issued: dict[int, tuple] = {}


def _issue(model_cfg, sleep_cfg, position, state):
    """Remember ``state`` as fitting the configs at window ``position`` (None: not concrete)."""
    if position is not None:
        key = id(state)
        forget = lambda _, key=key: _issued.pop(key, None)   # noqa: E731 (runs when state dies)
        _issued[key] = (weakref.ref(state, forget), model_cfg, sleep_cfg, position)
    return state


def _checked_position(state, model_cfg, sleep_cfg):
    """Check ``state`` against the configs; returns its position (None when traced)."""
    entry = _issued.get(id(state))
    if entry is not None and entry[0]() is state and entry[1] == model_cfg and entry[2] == sleep_cfg:
        return entry[3]
    _check_state(state, model_cfg, sleep_cfg)
    return _concrete_position(state)


def _concrete_position(state):
    # np.asarray first: int() of a jax Array takes a slower path (6 us vs 1 us on CPU)
    return None if isinstance(state.position, jax.core.Tracer) else int(np.asarray(state.position))


def _advanced(position, tokens, sleep_cfg):
    """The position after ``tokens`` more wake steps (sleeping when a window fills if
    ``sleep_cfg`` is given; None stays None)."""
    if position is None:
        return None
    return position + tokens if sleep_cfg is None else (position + tokens) % sleep_cfg.window


# ----------------------------------------------------------------------------- public API

def wake_step(params, state: StreamState, token, *, model_cfg: ModelConfig, sleep_cfg: SleepConfig):
    """Consume one token per stream (``token [B]`` int) -> ``(logits [B, vocab] f32, state)``.

    Requires ``state.position < L`` (a window that is not full); :func:`step` guarantees it by
    sleeping as soon as a window fills. Jit-compiled (configs are static).
    """
    position = _checked_position(state, model_cfg, sleep_cfg)
    check_params(params, model_cfg)
    check_stream_token(token, state.loop_input.shape[0], model_cfg.vocab_size)
    check_open_window(position, sleep_cfg.window, "wake_step")
    logits, state = _wake_step_jit(params, state, token, model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    return logits, _issue(model_cfg, sleep_cfg, _advanced(position, 1, None), state)


def sleep(params, state: StreamState, *, model_cfg: ModelConfig, sleep_cfg: SleepConfig) -> StreamState:
    """Consolidate the full window into the fast weights (passes 2..N), then evict.

    Requires a full window (``state.position == L``); with N = 1 only the eviction happens.
    """
    position = _checked_position(state, model_cfg, sleep_cfg)
    check_params(params, model_cfg)
    if position is not None and position != sleep_cfg.window:
        raise ValueError(f"state.position: sleep needs a full window (position == window = "
                         f"{sleep_cfg.window}), got position {position}")
    state = _sleep_jit(params, state, model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    return _issue(model_cfg, sleep_cfg, None if position is None else 0, state)


def step(params, state: StreamState, token, *, model_cfg: ModelConfig, sleep_cfg: SleepConfig):
    """:func:`wake_step`, then :func:`sleep` if this token filled the window.

    Returns ``(logits [B, vocab], state, slept)`` where ``slept`` is a bool scalar.
    """
    position = _checked_position(state, model_cfg, sleep_cfg)
    check_params(params, model_cfg)
    check_stream_token(token, state.loop_input.shape[0], model_cfg.vocab_size)
    check_open_window(position, sleep_cfg.window, "step")
    logits, state, slept = _step_jit(params, state, token, model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    return logits, _issue(model_cfg, sleep_cfg, _advanced(position, 1, sleep_cfg), state), slept


def feed(params, state: StreamState, tokens, *, model_cfg: ModelConfig, sleep_cfg: SleepConfig):
    """:func:`step` over ``tokens [B, T]`` (one jitted scan).

    Returns ``(logits [B, T, vocab], state, slept [T] bool)``; ``slept[i]`` is True when a sleep
    fired right after token ``i``.
    """
    position = _checked_position(state, model_cfg, sleep_cfg)
    check_params(params, model_cfg)
    check_stream_tokens(tokens, state.loop_input.shape[0], model_cfg.vocab_size)
    check_open_window(position, sleep_cfg.window, "feed")
    logits, state, slept = _feed_jit(params, state, jnp.asarray(tokens), model_cfg=model_cfg,
                                     sleep_cfg=sleep_cfg)
    position = _advanced(position, tokens.shape[1], sleep_cfg)
    return logits, _issue(model_cfg, sleep_cfg, position, state), slept


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
    position = _checked_position(state, model_cfg, sleep_cfg)
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
    state = _issue(model_cfg, sleep_cfg, _advanced(position, total, sleep_cfg), state)
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
    position = _checked_position(state, model_cfg, sleep_cfg)     # known: prefill returned it
    rng = jax.random.PRNGKey(0) if rng is None else rng
    new_tokens, state, slept_new, _ = _generate_loop_jit(
        params, state, logits[:, -1], rng, model_cfg=model_cfg, sleep_cfg=sleep_cfg,
        max_new_tokens=int(max_new_tokens), temperature=float(temperature))
    state = _issue(model_cfg, sleep_cfg, _advanced(position, max_new_tokens, sleep_cfg), state)
    slept = np.concatenate([np.asarray(slept_prompt), np.asarray(slept_new)])
    return GenerateResult(tokens=jnp.concatenate([prompt.astype(jnp.int32), new_tokens], axis=1),
                          sleep_positions=[int(i) for i in np.flatnonzero(slept)], state=state)
