"""The sleeping hybrid language model: Algorithm 1 of the paper, top to bottom.

Semantics (PAPER.md 4.2, with the project's fixed choices):

* ``tokens [B, T]`` is cut into windows ``tokens[:, jL:(j+1)L]`` (the last one may be
  partial). ``logits[:, i]`` predicts the token after ``tokens[:, i]``.
* Every window gets one **wake pass** (:func:`wake_pass`): embed, the full block stack (GDN
  layers start from the carried fast weights S), final RMSNorm and head. The window's logits
  come from this pass. Streaming runs the same function one token at a time against caches.
* If the window is full **and more tokens follow it**, the model **sleeps** (:func:`sleep`):
  passes 2..N re-run ``blocks[loop_start:loop_end]`` over the window. Pass n+1's input is pass
  n's output of block ``loop_end - 1`` (with the default full range: the top of the stack before
  the final norm); each GDN layer continues from the S the previous pass left. Consolidation
  windows have no loss in Algorithm 1, so their (wake-pass) logits are simply unused there; this
  makes the forward identical to the streaming rule "sleep when the window fills"
  (``sleepjax.inference``). The training loss uses :func:`forward_hidden`, which never computes
  the head (no logits at all; the loss applies the head at its loss positions only).
* Then the window is **evicted** (:func:`evict`): only S crosses a window boundary (hard
  eviction). Under sliding eviction the rotated K/V of the last ``L-1`` wake-pass tokens of
  every attention layer cross it too, so a wake token attends to the previous ``L-1`` tokens;
  sleep passes attend within their window only unless ``SleepConfig.sleep_sees_previous_window``.
* With ``loop_range = (s, e)`` a sleeping window runs the prelude ``[0, s)`` once (in the wake
  pass), the loop ``[s, e)`` N times, then (``SleepConfig.coda = "after_loop"``, the default)
  the coda ``[e, D)`` once more on pass N's features, its GDN layers starting again from their
  window-start fast weights (:func:`coda_pass`): the coda's consolidated S is written from the
  refined features, replacing its wake-pass write. ``coda = "wake_only"`` keeps the coda's
  wake-pass S (the coda then never sees refined features).
* The short convolution and the attention cache restart at every window start and in every
  pass. ``passes == 1`` has no sleep passes at all: exactly the plain hybrid.

Memory: full windows are a ``lax.scan`` (:func:`sleep_over_windows`) whose body is
rematerialised when ``SleepConfig.remat``; the N-1 sleep passes are an inner ``lax.scan`` with a
rematerialised body, so activation memory does not grow with N. Gradients flow through every
pass and every window (no stop-gradient).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from sleepjax.models import layers
from sleepjax.models.attention import shift_to_previous_window
from sleepjax.models.blocks import (attn_layer_names, embed, fast_weight_caches, fast_weights_of,
                                    gdn_layer_names, output_logits, run_blocks, zero_fast_weights)
from sleepjax.models.config import ModelConfig, SleepConfig
from sleepjax.models.params import declare_lm_params
from sleepjax.models.validation import check_configs, validate_tokens


def zero_previous_window_kv(cfg: ModelConfig, sleep_cfg: SleepConfig, batch_size: int):
    """Sliding eviction's carried K/V of the previous window's last ``L-1`` tokens (empty if hard)."""
    if sleep_cfg.eviction != "sliding":
        return {}
    shape = (batch_size, sleep_cfg.window - 1, cfg.kv_heads, cfg.attn_head_dim)
    dt = layers.compute_dtype(cfg)
    return {name: (jnp.zeros(shape, dt), jnp.zeros(shape, dt)) for name in attn_layer_names(cfg)}


# ----------------------------------------------------------------------------- 1. wake

def wake_hidden(params, tokens, caches, position, model_cfg, sleep_cfg, prev_kv=None,
                prev_valid=None):
    """:func:`wake_pass` without the final norm and head.

    Returns ``(h_top [B, T, d], h_loop, caches)``: ``h_top`` is the output of the last block
    (what :func:`~sleepjax.models.blocks.output_logits` turns into logits).
    """
    _, loop_end = sleep_cfg.resolved_loop_range(model_cfg.num_layers)
    h = embed(params, tokens, model_cfg)
    h_loop, caches = run_blocks(params, h, caches, range(loop_end), position, model_cfg,
                                prev_kv, prev_valid)
    h_top, caches = run_blocks(params, h_loop, caches, range(loop_end, model_cfg.num_layers),
                               position, model_cfg, prev_kv, prev_valid)
    return h_top, h_loop, caches


def wake_pass(params, tokens, caches, position, model_cfg, sleep_cfg, prev_kv=None, prev_valid=None):
    """Pass 1 over ``tokens [B, T]`` at ``position`` in the current window.

    ``caches``: ``{blocks_i: cache}`` (GDN layers at least their fast weights; see
    :func:`~sleepjax.models.blocks.run_blocks`). A window: ``position`` 0, no attention caches.
    A streaming step: ``T == 1`` against every layer's cache.

    Returns ``(logits [B, T, vocab] f32, h_loop, caches)``: ``h_loop`` is the output of block
    ``loop_end - 1`` (the input of the first sleep pass) and ``caches`` every layer's cache after
    the tokens (attention: the window's rotated keys and values).
    """
    h_top, h_loop, caches = wake_hidden(params, tokens, caches, position, model_cfg, sleep_cfg,
                                        prev_kv, prev_valid)
    return output_logits(params, h_top, model_cfg), h_loop, caches


# ----------------------------------------------------------------------------- 2. sleep

def sleep_passes(params, h_loop, fast, model_cfg, sleep_cfg, prev_kv=None, prev_valid=None):
    """Passes 2..N over a full window; returns ``(h, fast)``: pass N's output of block
    ``loop_end - 1`` and the consolidated fast weights.

    A ``lax.scan`` of length N-1 whose body (one pass over ``blocks[loop_start:loop_end]``) is
    rematerialised when ``sleep_cfg.remat``.
    """
    extra = sleep_cfg.passes - 1
    if extra == 0:
        return h_loop, fast
    start, end = sleep_cfg.resolved_loop_range(model_cfg.num_layers)
    looped = gdn_layer_names(model_cfg, start, end)
    sees_prev = sleep_cfg.eviction == "sliding" and sleep_cfg.sleep_sees_previous_window
    prev = prev_kv if sees_prev else None

    def one_pass(params, prev, carry):
        h, loop_fast = carry
        h, caches = run_blocks(params, h, fast_weight_caches(loop_fast), range(start, end), 0,
                               model_cfg, prev, prev_valid)
        return h, fast_weights_of(caches, looped)

    if sleep_cfg.remat:
        one_pass = jax.checkpoint(one_pass)

    def body(carry, _):
        return one_pass(params, prev, carry), None

    (h, loop_fast), _ = jax.lax.scan(body, (h_loop, {n: fast[n] for n in looped}), None, length=extra)
    return h, {**fast, **loop_fast}


def coda_pass(params, h, window_start_fast, model_cfg, sleep_cfg, prev_kv=None, prev_valid=None):
    """The coda ``[loop_end, D)`` once over pass N's features ``h``, its GDN layers starting
    from ``window_start_fast``; returns their fast weights (``{}`` without a coda)."""
    coda = sleep_cfg.coda_range(model_cfg.num_layers)
    if coda is None:
        return {}
    names = gdn_layer_names(model_cfg, *coda)
    sees_prev = sleep_cfg.eviction == "sliding" and sleep_cfg.sleep_sees_previous_window
    _, caches = run_blocks(params, h, fast_weight_caches({n: window_start_fast[n] for n in names}),
                           range(*coda), 0, model_cfg, prev_kv if sees_prev else None, prev_valid)
    return fast_weights_of(caches, names)


def coda_layer_names(model_cfg: ModelConfig, sleep_cfg: SleepConfig):
    """GDN layers of the re-run coda, whose window-start fast weights a sleep needs."""
    coda = sleep_cfg.coda_range(model_cfg.num_layers)
    return [] if coda is None else gdn_layer_names(model_cfg, *coda)


# ----------------------------------------------------------------------------- 3. evict

def evict(fast, kv, model_cfg, sleep_cfg):
    """What crosses a window boundary: S, plus (sliding) the last ``L-1`` wake-pass K/V."""
    if sleep_cfg.eviction != "sliding":
        return fast, {}
    prev = {name: shift_to_previous_window(k, v, model_cfg, sleep_cfg.window)
            for name, (k, v) in kv.items()}
    return fast, prev


def sleep(params, h_loop, fast, kv, model_cfg, sleep_cfg, prev_kv=None, prev_valid=None,
          window_start_fast=None):
    """A full window's sleep: passes 2..N from ``h_loop [B, L, d]``, the coda, then eviction.

    ``fast``: the fast weights after the wake pass; ``kv``: every attention layer's wake-pass
    ``(k, v) [B, L, Hkv, D]``; ``window_start_fast``: the coda GDN layers' fast weights at the
    window start (:func:`coda_layer_names`; unused without a re-run coda). Returns
    ``(fast, prev_kv)``, what crosses the boundary.
    """
    h, fast = sleep_passes(params, h_loop, fast, model_cfg, sleep_cfg, prev_kv, prev_valid)
    fast = {**fast, **coda_pass(params, h, window_start_fast, model_cfg, sleep_cfg, prev_kv,
                                prev_valid)}
    return evict(fast, kv, model_cfg, sleep_cfg)


# ----------------------------------------------------------------------------- 4. windows

def sleeping_window(params, carry, window_tokens, model_cfg, sleep_cfg, head=True):
    """One full window: wake pass, sleep passes 2..N, eviction.

    ``carry`` is ``(fast, prev_kv, prev_valid)``, what crosses window boundaries; returns
    ``(carry, logits [B, L, vocab])``, or ``(carry, h [B, L, d])`` (the wake pass's last
    block output, no head computed) when ``head`` is False.
    """
    window_start_fast, prev, prev_valid = carry
    h_top, h_loop, caches = wake_hidden(params, window_tokens,
                                        fast_weight_caches(window_start_fast), 0, model_cfg,
                                        sleep_cfg, prev, prev_valid)
    fast = fast_weights_of(caches, window_start_fast)
    kv = {name: tuple(caches[name]) for name in attn_layer_names(model_cfg)}
    fast, prev = sleep(params, h_loop, fast, kv, model_cfg, sleep_cfg, prev, prev_valid,
                       window_start_fast)
    out = output_logits(params, h_top, model_cfg) if head else h_top
    return (fast, prev, jnp.asarray(True)), out


def sleep_over_windows(params, carry, tokens, model_cfg, sleep_cfg, head=True):
    """:func:`sleeping_window` scanned over ``tokens [B, n*L]`` (whole windows, each sleeps).

    Shared by the training forward and streaming prefill, so both run the same code. Each
    window is rematerialised when ``sleep_cfg.remat`` (only matters under differentiation).
    Returns ``(carry, logits [B, n*L, vocab])``, or ``(carry, h [B, n*L, d])`` when ``head``
    is False (the training forward: consolidation windows carry no loss, so their head is
    never computed).
    """
    bsz, total = tokens.shape
    window = sleep_cfg.window
    step = functools.partial(sleeping_window, model_cfg=model_cfg, sleep_cfg=sleep_cfg, head=head)
    if sleep_cfg.remat:
        step = jax.checkpoint(step)
    windows = tokens.reshape(bsz, total // window, window).swapaxes(0, 1)
    carry, out = jax.lax.scan(lambda c, w: step(params, c, w), carry, windows)
    return carry, out.swapaxes(0, 1).reshape(bsz, total, -1)


def forward_hidden(params, tokens, model_cfg: ModelConfig, sleep_cfg: SleepConfig):
    """The training forward up to the head: ``tokens [B, T] int -> h [B, T, d]``.

    ``h`` is every window's wake-pass output of the last block (compute dtype, before the
    final norm); ``output_logits(params, h, model_cfg)`` gives :func:`forward_sequence`'s
    logits. No head is computed here, so a loss can apply it only where it has weight
    (:func:`sleepjax.models.losses.gathered_token_losses`): with a large vocabulary the
    full-sequence logits ``[B, T, vocab]`` would dominate training memory.
    """
    bsz, seq = tokens.shape
    window = sleep_cfg.window
    n_sleeping = (seq - 1) // window          # full windows followed by more tokens
    fast = zero_fast_weights(model_cfg, bsz)
    prev = zero_previous_window_kv(model_cfg, sleep_cfg, bsz)
    prev_valid = jnp.asarray(False)
    hidden = []
    if n_sleeping:
        (fast, prev, prev_valid), full = sleep_over_windows(
            params, (fast, prev, prev_valid), tokens[:, :n_sleeping * window], model_cfg,
            sleep_cfg, head=False)
        hidden.append(full)
    last, _, _ = wake_hidden(params, tokens[:, n_sleeping * window:], fast_weight_caches(fast), 0,
                             model_cfg, sleep_cfg, prev, prev_valid)
    hidden.append(last)
    return jnp.concatenate(hidden, axis=1) if len(hidden) > 1 else hidden[0]


def forward_sequence(params, tokens, model_cfg: ModelConfig, sleep_cfg: SleepConfig):
    """Pure training forward: ``tokens [B, T] int -> logits [B, T, vocab] float32``.

    The head over :func:`forward_hidden` (one path). See the module docstring for the window /
    sleep semantics. ``tokens`` are not validated here (see
    :func:`sleepjax.models.validate_tokens`).
    """
    return output_logits(params, forward_hidden(params, tokens, model_cfg, sleep_cfg), model_cfg)


# ----------------------------------------------------------------------------- module

class _ParamsOnly(nn.Module):
    model_cfg: ModelConfig

    @nn.compact
    def __call__(self):
        declare_lm_params(self.model_cfg)


def init_params(model_cfg: ModelConfig, rng):
    """The parameters of ``SleepLM(model_cfg, any_sleep_cfg)`` without tracing a forward.

    Same tree and, for the same ``rng``, the same values as ``SleepLM.init(rng, tokens)["params"]``
    (the parameters do not depend on the sleep config), but fast: nothing is compiled.
    """
    return _ParamsOnly(model_cfg).init(rng)["params"]


class SleepLM(nn.Module):
    """Hybrid attention / Gated DeltaNet LM with N-pass sleep at every full window.

    ``SleepLM(model_cfg, sleep_cfg).init(rng, tokens)`` creates the parameters (layout in
    :mod:`sleepjax.models`); ``.apply({"params": p}, tokens)`` returns float32 logits
    ``[B, T, vocab]`` (see :func:`forward_sequence`); ``.apply({"params": p}, tokens,
    hidden=True)`` returns the hidden states ``[B, T, d]`` before the final norm and head (see
    :func:`forward_hidden`; the training loss applies the head only at its loss positions).
    Concrete token ids outside ``[0, vocab)`` raise ValueError before any compute.

    Like any linen ``init``, ``SleepLM.init`` also runs the forward (eagerly unless jitted);
    :func:`init_params` builds the same tree without it.
    """

    model_cfg: ModelConfig
    sleep_cfg: SleepConfig

    @nn.compact
    def __call__(self, tokens, hidden: bool = False):
        check_configs(self.model_cfg, self.sleep_cfg)
        validate_tokens(tokens, self.model_cfg.vocab_size)
        declare_lm_params(self.model_cfg)
        forward = forward_hidden if hidden else forward_sequence
        return forward(self.variables["params"], jnp.asarray(tokens), self.model_cfg,
                       self.sleep_cfg)
