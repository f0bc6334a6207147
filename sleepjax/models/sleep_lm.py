"""The sleeping hybrid language model: training-time forward over a whole sequence.

Semantics (Algorithm 1 of the paper, PAPER.md 4.2, with the project's fixed choices):

* ``tokens [B, T]`` is cut into windows ``tokens[:, jL:(j+1)L]`` (the last one may be
  partial). ``logits[:, i]`` predicts the token after ``tokens[:, i]``.
* Every window gets one **wake pass**: embed, the full block stack (GDN layers start from the
  carried fast weights S), final RMSNorm and head. The window's logits come from this pass.
* If the window is full **and more tokens follow it**, the model **sleeps**: passes 2..N re-run
  ``blocks[loop_start:loop_end]`` over the window. Pass n+1's input is pass n's output of block
  ``loop_end - 1`` (with the default full range: the top of the stack before the final norm);
  each GDN layer continues from the S the previous pass left. Consolidation windows have no loss
  in Algorithm 1, so their (wake-pass) logits are simply unused there; this makes the forward
  identical to the streaming rule "sleep when the window fills" (``sleepjax.inference``).
* Only S crosses a window boundary (hard eviction). Under sliding eviction the rotated K/V of
  the last ``L-1`` wake-pass tokens of every attention layer cross it too, so a wake token
  attends to the previous ``L-1`` tokens; sleep passes attend within their window only unless
  ``SleepConfig.sleep_sees_previous_window``.
* Blocks outside ``loop_range`` run only in the wake pass (documented deviation from a
  prelude/middle/coda reading in which the coda would run after the loop).
* The short convolution and the attention cache restart at every window start and in every
  pass. ``passes == 1`` has no sleep passes at all: exactly the plain hybrid.

Memory: full windows are a ``lax.scan`` whose body is rematerialised when ``SleepConfig.remat``;
the N-1 sleep passes are an inner ``lax.scan`` with a rematerialised body, so activation memory
does not grow with N. Gradients flow through every pass and every window (no stop-gradient).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from sleepjax.models import layers
from sleepjax.models.config import ModelConfig, SleepConfig
from sleepjax.models.params import declare_lm_params
from sleepjax.models.validation import check_configs, validate_tokens
from sleepjax.parallel.activations import constrain


def block_name(i: int) -> str:
    return f"blocks_{i}"


def gdn_layer_names(cfg: ModelConfig, start: int = 0, end: int | None = None):
    end = cfg.num_layers if end is None else end
    return [block_name(i) for i in range(start, end) if cfg.layer_pattern[i] == "G"]


def attn_layer_names(cfg: ModelConfig):
    return [block_name(i) for i, kind in enumerate(cfg.layer_pattern) if kind == "A"]


def zero_fast_weights(cfg: ModelConfig, batch_size: int):
    """Fresh fast weights (every sequence starts from S = 0): ``{blocks_i: [B, H, K, V] f32}``."""
    shape = (batch_size, cfg.gdn_heads, cfg.gdn_head_dim, cfg.gdn_value_dim)
    return {name: jnp.zeros(shape, jnp.float32) for name in gdn_layer_names(cfg)}


def zero_previous_window_kv(cfg: ModelConfig, sleep_cfg: SleepConfig, batch_size: int):
    """Sliding eviction's carried K/V of the previous window's last ``L-1`` tokens (empty if hard)."""
    if sleep_cfg.eviction != "sliding":
        return {}
    shape = (batch_size, sleep_cfg.window - 1, cfg.attn_heads, cfg.attn_head_dim)
    dt = layers.compute_dtype(cfg)
    return {name: (jnp.zeros(shape, dt), jnp.zeros(shape, dt)) for name in attn_layer_names(cfg)}


# ----------------------------------------------------------------------------- pieces

def embed(params, tokens, cfg: ModelConfig):
    # Gather the table's FSDP-split d_model dim before the lookup (rows may stay split over
    # the vocabulary): a gather from a table split along its feature dim cannot be re-sharded
    # to the batch layout without replicating the result first.
    table = constrain(params["embed"]["embedding"], ("vocab", None))
    return jnp.take(table, tokens, axis=0).astype(layers.compute_dtype(cfg))


def output_logits(params, h, cfg: ModelConfig):
    """Final RMSNorm and the (tied or untied) head; float32 logits."""
    dt = layers.compute_dtype(cfg)
    h = layers.rms_norm(h, params["final_norm"]["scale"], cfg.norm_eps)
    w = params["embed"]["embedding"].T if cfg.tie_embeddings else params["head"]["kernel"]
    return jnp.dot(h.astype(dt), w.astype(dt), preferred_element_type=jnp.float32)


def _mlp_residual(p, h, cfg):
    return h + layers.mlp(p["mlp"], layers.rms_norm(h, p["mlp_norm"]["scale"], cfg.norm_eps), cfg)


def residual_stream(h):
    """Pin hidden states ``[B, ..., d]`` to batch-only sharding (a no-op without a mesh).

    Under FSDP the weights' d_model dim is split over ``fsdp``; without this hint XLA lets
    the residual stream inherit that split and then cannot re-shard it cheaply inside the
    window / sleep loops (an "involuntary full rematerialization"). Pinned, the weights are
    gathered instead, which is what FSDP means.
    """
    return constrain(h, ("batch", ...))


def fast_weight_layout(state):
    """Pin a fast-weight state ``[B, H, K, V]`` to batch x heads, so it never moves in a loop."""
    return constrain(state, ("batch", "heads", None, None))


def run_blocks(params, h, fast, layer_ids, cfg: ModelConfig, prev_kv=None, prev_valid=None):
    """One pass of ``blocks[i] for i in layer_ids`` over a window (parallel form).

    Args:
      h: ``[B, T, d]`` input hidden states.
      fast: ``{blocks_i: S}`` for (at least) the GDN layers in ``layer_ids``.
      prev_kv: sliding eviction's ``{blocks_i: (k, v)}`` or None (attention within the window).

    Returns ``(h, fast, kv)``: output hidden states, updated fast weights (a new dict), and each
    attention layer's rotated ``(k, v)`` of this window.
    """
    fast, kv = dict(fast), {}
    for i in layer_ids:
        name = block_name(i)
        p = params[name]
        x = layers.rms_norm(h, p["mixer_norm"]["scale"], cfg.norm_eps)
        if cfg.layer_pattern[i] == "A":
            prev = None if not prev_kv else prev_kv[name]
            out, kv[name] = layers.attention_window(p["attn"], x, cfg, prev, prev_valid)
        else:
            out, fast[name] = layers.gdn_window(p["gdn"], x, fast[name], cfg)
            fast[name] = fast_weight_layout(fast[name])
        h = residual_stream(_mlp_residual(p, h + out, cfg))
    return h, fast, kv


def wake_window(params, tokens, fast, model_cfg, sleep_cfg, prev_kv=None, prev_valid=None):
    """Pass 1 over one window: returns ``(logits, h_loop, fast, kv)``.

    ``h_loop`` is the output of block ``loop_end - 1``, the input of the first sleep pass.
    """
    _, loop_end = sleep_cfg.resolved_loop_range(model_cfg.num_layers)
    h = residual_stream(embed(params, tokens, model_cfg))
    h_loop, fast, kv = run_blocks(params, h, fast, range(loop_end), model_cfg, prev_kv, prev_valid)
    h_top, fast, kv_top = run_blocks(params, h_loop, fast, range(loop_end, model_cfg.num_layers),
                                     model_cfg, prev_kv, prev_valid)
    return output_logits(params, h_top, model_cfg), h_loop, fast, {**kv, **kv_top}


def sleep_passes(params, h_loop, fast, model_cfg, sleep_cfg, prev_kv=None, prev_valid=None):
    """Passes 2..N over a full window; returns the consolidated fast weights.

    A ``lax.scan`` of length N-1 whose body (one pass over ``blocks[loop_start:loop_end]``) is
    rematerialised when ``sleep_cfg.remat``. Hidden states of the passes are discarded.
    """
    extra = sleep_cfg.passes - 1
    if extra == 0:
        return fast
    start, end = sleep_cfg.resolved_loop_range(model_cfg.num_layers)
    looped = gdn_layer_names(model_cfg, start, end)
    prev = prev_kv if (sleep_cfg.eviction == "sliding" and sleep_cfg.sleep_sees_previous_window) else None

    def one_pass(params, prev, carry):
        h, loop_fast = carry
        h, loop_fast, _ = run_blocks(params, h, loop_fast, range(start, end), model_cfg, prev, prev_valid)
        return h, loop_fast

    if sleep_cfg.remat:
        one_pass = jax.checkpoint(one_pass)

    def body(carry, _):
        return one_pass(params, prev, carry), None

    (_, loop_fast), _ = jax.lax.scan(body, (h_loop, {n: fast[n] for n in looped}), None, length=extra)
    return {**fast, **loop_fast}


def evict(fast, kv, model_cfg, sleep_cfg):
    """What crosses a window boundary: S, plus (sliding) the last ``L-1`` wake-pass K/V."""
    if sleep_cfg.eviction != "sliding":
        return fast, {}
    prev = {name: layers.shift_to_previous_window(k, v, model_cfg, sleep_cfg.window)
            for name, (k, v) in kv.items()}
    return fast, prev


def sleeping_window(params, carry, window_tokens, model_cfg, sleep_cfg):
    """One full window: wake pass, sleep passes 2..N, eviction.

    ``carry`` is ``(fast, prev_kv, prev_valid)``, what crosses window boundaries; returns
    ``(carry, logits [B, L, vocab])``.
    """
    fast, prev, prev_valid = carry
    out, h_loop, fast, kv = wake_window(params, window_tokens, fast, model_cfg, sleep_cfg,
                                        prev, prev_valid)
    fast = sleep_passes(params, h_loop, fast, model_cfg, sleep_cfg, prev, prev_valid)
    fast, prev = evict(fast, kv, model_cfg, sleep_cfg)
    return (fast, prev, jnp.asarray(True)), out


def sleep_over_windows(params, carry, tokens, model_cfg, sleep_cfg):
    """:func:`sleeping_window` scanned over ``tokens [B, n*L]`` (whole windows, each sleeps).

    Shared by the training forward and streaming prefill, so both run the same code. Each
    window is rematerialised when ``sleep_cfg.remat`` (only matters under differentiation).
    Returns ``(carry, logits [B, n*L, vocab])``.
    """
    bsz, total = tokens.shape
    window = sleep_cfg.window
    step = functools.partial(sleeping_window, model_cfg=model_cfg, sleep_cfg=sleep_cfg)
    if sleep_cfg.remat:
        step = jax.checkpoint(step)
    windows = tokens.reshape(bsz, total // window, window).swapaxes(0, 1)
    carry, logits = jax.lax.scan(lambda c, w: step(params, c, w), carry, windows)
    return carry, logits.swapaxes(0, 1).reshape(bsz, total, -1)


def forward_sequence(params, tokens, model_cfg: ModelConfig, sleep_cfg: SleepConfig):
    """Pure training forward: ``tokens [B, T] int -> logits [B, T, vocab] float32``.

    See the module docstring for the window / sleep semantics. ``tokens`` are not validated
    here (see :func:`sleepjax.models.validate_tokens`).
    """
    bsz, seq = tokens.shape
    window = sleep_cfg.window
    n_sleeping = (seq - 1) // window          # full windows followed by more tokens
    fast = zero_fast_weights(model_cfg, bsz)
    prev = zero_previous_window_kv(model_cfg, sleep_cfg, bsz)
    prev_valid = jnp.asarray(False)
    logits = []
    if n_sleeping:
        (fast, prev, prev_valid), full = sleep_over_windows(
            params, (fast, prev, prev_valid), tokens[:, :n_sleeping * window], model_cfg, sleep_cfg)
        logits.append(full)
    last, _, _, _ = wake_window(params, tokens[:, n_sleeping * window:], fast, model_cfg, sleep_cfg,
                                prev, prev_valid)
    logits.append(last)
    return jnp.concatenate(logits, axis=1) if len(logits) > 1 else logits[0]


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
    ``[B, T, vocab]`` (see :func:`forward_sequence`). Concrete token ids outside
    ``[0, vocab)`` raise ValueError before any compute.

    Like any linen ``init``, ``SleepLM.init`` also runs the forward (eagerly unless jitted);
    :func:`init_params` builds the same tree without it.
    """

    model_cfg: ModelConfig
    sleep_cfg: SleepConfig

    @nn.compact
    def __call__(self, tokens):
        check_configs(self.model_cfg, self.sleep_cfg)
        validate_tokens(tokens, self.model_cfg.vocab_size)
        declare_lm_params(self.model_cfg)
        return forward_sequence(self.variables["params"], jnp.asarray(tokens), self.model_cfg,
                                self.sleep_cfg)
