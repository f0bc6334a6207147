"""The sleeping hybrid language model: Algorithm 1 of the paper, top to bottom.

Semantics (the paper's Algorithm 1, with the project's fixed choices):

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
* Then the window is **evicted**: only S crosses a window boundary (hard eviction), in a
  :class:`~sleepjax.models.carry.WindowCarry`. Under sliding eviction the rotated K/V of the last ``L-1`` wake-pass tokens of
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
rematerialised body, so activation memory does not grow with N. By default gradients flow
through every pass and every window (no stop-gradient).

Training options (:func:`training_plan`; evaluation and streaming use :func:`inference_plan`):
a per-step N (``sleep.train_passes``, ``sleep.passes_warmup_fraction``: the train step passes
N as a traced scalar) and truncated backprop through the passes (``sleep.backprop_passes``);
at inference, adaptive sleep (``sleep.adaptive_tol``). How each runs:
:mod:`sleepjax.models.sleep_passes`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from sleepjax.models.pass_law import max_passes

from sleepjax.models.blocks import (attn_layer_names, embed, fast_weights_of, gdn_layer_names,
                                    output_logits, run_blocks)
from sleepjax.models.carry import WindowCarry, evicted_kv, fast_weight_caches, initial_carry
from sleepjax.models.config import ModelConfig, SleepConfig
from sleepjax.models.params import declare_lm_params
from sleepjax.models.sleep_passes import PassPlan, run_passes
from sleepjax.models.validation import check_configs, validate_tokens


def training_plan(sleep_cfg: SleepConfig) -> PassPlan:
    """The training forward's passes: ``sleep.backprop_passes``; N up to the law's largest."""
    return PassPlan(max_passes=max_passes(sleep_cfg.train_pass_law, sleep_cfg.passes),
                    backprop=sleep_cfg.backprop_passes)


def inference_plan(sleep_cfg: SleepConfig) -> PassPlan:
    """Evaluation, prefill and streaming: N = ``sleep.passes``, adaptive if ``adaptive_tol``."""
    return PassPlan(max_passes=sleep_cfg.passes, adaptive_tol=sleep_cfg.adaptive_tol)


# ----------------------------------------------------------------------------- 1. wake

def wake_hidden(params, tokens, caches, position, model_cfg, sleep_cfg, previous=None):
    """:func:`wake_pass` without the final norm and head.

    Returns ``(h_top [B, T, d], h_loop, caches)``: ``h_top`` is the output of the last block
    (what :func:`~sleepjax.models.blocks.output_logits` turns into logits).
    """
    _, loop_end = sleep_cfg.resolved_loop_range(model_cfg.num_layers)
    h = embed(params, tokens, model_cfg)
    h_loop, caches = run_blocks(params, h, caches, range(loop_end), position, model_cfg, previous)
    h_top, caches = run_blocks(params, h_loop, caches, range(loop_end, model_cfg.num_layers),
                               position, model_cfg, previous)
    return h_top, h_loop, caches


def wake_pass(params, tokens, caches, position, model_cfg, sleep_cfg, previous=None):
    """Pass 1 over ``tokens [B, T]`` at ``position`` in the current window.

    ``caches``: ``{blocks_i: cache}`` (GDN layers at least their fast weights; see
    :func:`~sleepjax.models.blocks.run_blocks`). A window: ``position`` 0, no attention caches.
    A streaming step: ``T == 1`` against every layer's cache. ``previous``: the
    :class:`WindowCarry` holding sliding eviction's previous-window K/V (or None).

    Returns ``(logits [B, T, vocab] f32, h_loop, caches)``: ``h_loop`` is the output of block
    ``loop_end - 1`` (the input of the first sleep pass) and ``caches`` every layer's cache after
    the tokens (attention: the window's rotated keys and values).
    """
    h_top, h_loop, caches = wake_hidden(params, tokens, caches, position, model_cfg, sleep_cfg,
                                        previous)
    return output_logits(params, h_top, model_cfg), h_loop, caches


# ----------------------------------------------------------------------------- 2. sleep

def sleep_passes(params, h_loop, fast, model_cfg, sleep_cfg, previous=None, passes=None,
                 plan: PassPlan | None = None):
    """Passes 2..N over a full window; returns ``(h, fast, used)``: pass N's output of block
    ``loop_end - 1``, the consolidated fast weights and the passes each batch row used [B].

    ``passes``: N (default ``sleep_cfg.passes``; a traced int32 scalar in training with a
    per-step N); ``plan``: how the passes run (default :func:`inference_plan`; see
    :mod:`sleepjax.models.sleep_passes`).
    """
    plan = inference_plan(sleep_cfg) if plan is None else plan
    passes = sleep_cfg.passes if passes is None else passes
    start, end = sleep_cfg.resolved_loop_range(model_cfg.num_layers)
    looped = gdn_layer_names(model_cfg, start, end)
    seen = previous if sleep_cfg.sleep_attends_previous else None

    def one_pass(params, seen, carry):
        h, loop_fast = carry
        h, caches = run_blocks(params, h, fast_weight_caches(loop_fast), range(start, end), 0,
                               model_cfg, seen)
        return h, fast_weights_of(caches, looped)

    remat = jax.checkpoint(one_pass) if sleep_cfg.remat else one_pass
    # Passes without gradient see the weights as constants (stopped outside their loop), so
    # reverse mode never meets the while loop they run in.
    constant = jax.lax.stop_gradient((params, seen))
    (h, loop_fast), used = run_passes(lambda c: remat(params, seen, c),
                                      lambda c: one_pass(*constant, c),
                                      (h_loop, {n: fast[n] for n in looped}), passes, plan)
    return h, {**fast, **loop_fast}, used


def coda_pass(params, h, window_start_fast, model_cfg, sleep_cfg, previous=None, max_passes=None):
    """The coda ``[loop_end, D)`` once over pass N's features ``h``, its GDN layers starting
    from ``window_start_fast``; returns their fast weights (``{}`` without a coda)."""
    coda = sleep_cfg.coda_range(model_cfg.num_layers, max_passes)
    if coda is None:
        return {}
    names = gdn_layer_names(model_cfg, *coda)
    seen = previous if sleep_cfg.sleep_attends_previous else None
    _, caches = run_blocks(params, h, fast_weight_caches({n: window_start_fast[n] for n in names}),
                           range(*coda), 0, model_cfg, seen)
    return fast_weights_of(caches, names)


def coda_layer_names(model_cfg: ModelConfig, sleep_cfg: SleepConfig):
    """GDN layers of the re-run coda, whose window-start fast weights a sleep needs."""
    coda = sleep_cfg.coda_range(model_cfg.num_layers)
    return [] if coda is None else gdn_layer_names(model_cfg, *coda)


def sleep(params, h_loop, fast, kv, model_cfg, sleep_cfg, previous=None, window_start_fast=None,
          passes=None, plan: PassPlan | None = None):
    """A full window's sleep: passes 2..N from ``h_loop [B, L, d]``, the coda, then eviction.

    ``fast``: the fast weights after the wake pass; ``kv``: every attention layer's wake-pass
    ``(k, v) [B, L, Hkv, D]``; ``previous``: the carry the window started from (sliding
    eviction's previous K/V); ``window_start_fast``: the coda GDN layers' fast weights at the
    window start (:func:`coda_layer_names`; unused without a re-run coda); ``passes`` / ``plan``
    as in :func:`sleep_passes`. Returns ``(fast, previous_kv, used)``: what crosses the
    boundary, and the passes each batch row used [B].
    """
    plan = inference_plan(sleep_cfg) if plan is None else plan
    h, fast, used = sleep_passes(params, h_loop, fast, model_cfg, sleep_cfg, previous, passes, plan)
    fast = {**fast, **coda_pass(params, h, window_start_fast, model_cfg, sleep_cfg, previous,
                                plan.max_passes)}
    return fast, evicted_kv(kv, model_cfg, sleep_cfg), used


# ----------------------------------------------------------------------------- 3. windows

def sleeping_window(params, carry: WindowCarry, window_tokens, model_cfg, sleep_cfg, head=True,
                    passes=None, plan: PassPlan | None = None):
    """One full window: wake pass, sleep passes 2..N, eviction.

    Returns ``(carry, (out, used))``: the carry into the next window, the window's logits
    ``[B, L, vocab]`` (or, when ``head`` is False, the wake pass's last block output
    ``[B, L, d]``, no head computed) and the passes each batch row slept [B].
    """
    h_top, h_loop, caches = wake_hidden(params, window_tokens, carry.caches, 0, model_cfg,
                                        sleep_cfg, carry)
    window_start_fast = carry.fast_weights
    fast = fast_weights_of(caches, window_start_fast)
    kv = {name: tuple(caches[name]) for name in attn_layer_names(model_cfg)}
    fast, previous_kv, used = sleep(params, h_loop, fast, kv, model_cfg, sleep_cfg, carry,
                                    window_start_fast, passes, plan)
    out = output_logits(params, h_top, model_cfg) if head else h_top
    return WindowCarry(fast_weight_caches(fast), previous_kv, jnp.asarray(True)), (out, used)


def sleep_over_windows(params, carry: WindowCarry, tokens, model_cfg, sleep_cfg, head=True,
                       passes=None, plan: PassPlan | None = None):
    """:func:`sleeping_window` scanned over ``tokens [B, n*L]`` (whole windows, each sleeps).

    Shared by the training forward and streaming prefill, so both run the same code. Each
    window is rematerialised when ``sleep_cfg.remat`` (only matters under differentiation).
    Returns ``(carry, out [B, n*L, vocab | d], used [B, n])`` (see :func:`sleeping_window`).
    """
    bsz, total = tokens.shape
    window = sleep_cfg.window
    step = functools.partial(sleeping_window, model_cfg=model_cfg, sleep_cfg=sleep_cfg, head=head,
                             plan=plan)
    if sleep_cfg.remat:
        step = jax.checkpoint(step)
    windows = tokens.reshape(bsz, total // window, window).swapaxes(0, 1)
    carry, (out, used) = jax.lax.scan(lambda c, w: step(params, c, w, passes=passes), carry,
                                      windows)
    return carry, out.swapaxes(0, 1).reshape(bsz, total, -1), used.T


def forward_hidden_and_passes(params, tokens, model_cfg: ModelConfig, sleep_cfg: SleepConfig,
                              passes=None, plan: PassPlan | None = None):
    """:func:`forward_hidden`, also returning the passes each row slept per sleeping window
    ``[B, (T-1)//L]`` int32 (adaptive sleep makes them differ)."""
    bsz, seq = tokens.shape
    window = sleep_cfg.window
    n_sleeping = (seq - 1) // window          # full windows followed by more tokens
    carry = initial_carry(model_cfg, sleep_cfg, bsz)
    hidden = []
    used = jnp.zeros((bsz, 0), jnp.int32)
    if n_sleeping:
        carry, full, used = sleep_over_windows(params, carry, tokens[:, :n_sleeping * window],
                                               model_cfg, sleep_cfg, head=False, passes=passes,
                                               plan=plan)
        hidden.append(full)
    last, _, _ = wake_hidden(params, tokens[:, n_sleeping * window:], carry.caches, 0, model_cfg,
                             sleep_cfg, carry)
    hidden.append(last)
    return (jnp.concatenate(hidden, axis=1) if len(hidden) > 1 else hidden[0]), used


def forward_hidden(params, tokens, model_cfg: ModelConfig, sleep_cfg: SleepConfig, passes=None,
                   plan: PassPlan | None = None):
    """The training forward up to the head: ``tokens [B, T] int -> h [B, T, d]``.

    ``h`` is every window's wake-pass output of the last block (compute dtype, before the
    final norm); ``output_logits(params, h, model_cfg)`` gives :func:`forward_sequence`'s
    logits. No head is computed here, so a loss can apply it only where it has weight
    (:func:`sleepjax.training.loss.gathered_token_losses`): with a large vocabulary the
    full-sequence logits ``[B, T, vocab]`` would dominate training memory. ``passes`` (this
    forward's N, possibly traced) and ``plan`` default to ``sleep_cfg.passes`` and
    :func:`inference_plan`; the training loss passes :func:`training_plan`.
    """
    return forward_hidden_and_passes(params, tokens, model_cfg, sleep_cfg, passes, plan)[0]


def forward_sequence(params, tokens, model_cfg: ModelConfig, sleep_cfg: SleepConfig, passes=None,
                     plan: PassPlan | None = None):
    """Pure forward: ``tokens [B, T] int -> logits [B, T, vocab] float32``.

    The head over :func:`forward_hidden` (one path). See the module docstring for the window /
    sleep semantics. ``tokens`` are not validated here (see
    :func:`sleepjax.models.validate_tokens`).
    """
    return output_logits(params, forward_hidden(params, tokens, model_cfg, sleep_cfg, passes, plan),
                         model_cfg)


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
