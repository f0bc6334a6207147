"""The streaming state (:class:`StreamState`): its type, a fresh one, the logical axes of its
leaves, and the host-side checks every public streaming call runs on it.
"""

from __future__ import annotations

import functools
import weakref

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from sleepjax.models import sleep_lm
from sleepjax.models.attention import zero_kv_cache
from sleepjax.models.blocks import attn_layer_names, gdn_layer_names
from sleepjax.models.carry import (FAST_WEIGHT_AXES, REPLICATED, LogicalAxes, WindowCarry,
                                   carry_logical_axes, initial_carry)
from sleepjax.models.config import ModelConfig, SleepConfig
from sleepjax.models.gated_deltanet import GDNCache, zero_conv_history
from sleepjax.models.layers import compute_dtype
from sleepjax.models.validation import check_configs, check_tree_shapes, tree_layout


@flax.struct.dataclass
class StreamState:
    """Everything a streaming model remembers between tokens (all arrays, fixed shapes).

    Attributes:
      carry: the :class:`~sleepjax.models.carry.WindowCarry` of the open window: every layer's
        cache (GDN: fast weights ``[B, Hv, K, V]`` f32, the only long-term memory, and the short
        conv's last pre-conv q, k, v, zeros at a window start; attention: the window's rotated
        keys and values ``[B, L, Hkv, D]``, slots ``>= position`` unused) and, under sliding
        eviction, the previous window's last ``L-1`` keys and values.
      loop_input: ``[B, L, d]`` the wake pass's outputs of block ``loop_end-1`` for this window,
        the input of the first sleep pass.
      position: int32 scalar, number of tokens of the current window already consumed.
      window_start_fast: ``{blocks_i: [B, Hv, K, V]}`` the fast weights at this window's start
        of the coda's GDN layers, which the sleep re-runs from them (``sleep.coda``); ``{}``
        when there is no re-run coda.
      sleep_passes: ``[B]`` int32, the passes each row used in its last sleep (0 before the
        first; below ``sleep.passes`` only under adaptive sleep).
    """

    carry: WindowCarry
    loop_input: jax.Array
    position: jax.Array
    sleep_passes: jax.Array
    window_start_fast: dict = flax.struct.field(default_factory=dict)

    @property
    def fast_weights(self) -> dict:
        """``{blocks_i: [B, Hv, K, V]}`` every GDN layer's fast weights."""
        return self.carry.fast_weights


def _window_caches(model_cfg, fast, batch_size, window):
    """Every layer's cache at a window start: the given fast weights, empty histories."""
    caches = {name: GDNCache(fast[name], zero_conv_history(model_cfg, batch_size))
              for name in gdn_layer_names(model_cfg)}
    caches.update({name: zero_kv_cache(model_cfg, batch_size, window)
                   for name in attn_layer_names(model_cfg)})
    return caches


def init_state(model_cfg: ModelConfig, sleep_cfg: SleepConfig, batch_size: int) -> StreamState:
    """A fresh state (S = 0, empty caches, position 0) for ``batch_size`` streams."""
    check_configs(model_cfg, sleep_cfg)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: must be a positive int, got {batch_size!r}")
    window = sleep_cfg.window
    start = initial_carry(model_cfg, sleep_cfg, batch_size)
    fast = start.fast_weights
    return issue(model_cfg, sleep_cfg, 0, StreamState(
        carry=start.replace(caches=_window_caches(model_cfg, fast, batch_size, window)),
        loop_input=jnp.zeros((batch_size, window, model_cfg.d_model), compute_dtype(model_cfg)),
        position=jnp.asarray(0, jnp.int32),
        sleep_passes=jnp.zeros((batch_size,), jnp.int32),
        window_start_fast={name: fast[name]
                           for name in sleep_lm.coda_layer_names(model_cfg, sleep_cfg)},
    ))


def stream_state_logical_axes(state: StreamState) -> StreamState:
    """The logical axes of every leaf of ``state`` (:class:`~sleepjax.models.carry.LogicalAxes`
    leaves): the streaming state's sharding is declared here, beside its type."""
    return StreamState(carry=carry_logical_axes(state.carry),
                       loop_input=LogicalAxes(("batch", "length", None)),
                       position=REPLICATED, sleep_passes=LogicalAxes(("batch",)),
                       window_start_fast={name: FAST_WEIGHT_AXES
                                          for name in state.window_start_fast})


@functools.lru_cache(maxsize=64)
def _state_layout(model_cfg, sleep_cfg, batch_size):
    """The layout of the :class:`StreamState` these configs need (traced once, nothing allocated)."""
    return tree_layout(jax.eval_shape(lambda: init_state(model_cfg, sleep_cfg, batch_size)))


def check_state(state, model_cfg, sleep_cfg):
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


def issue(model_cfg, sleep_cfg, position, state):
    """Remember ``state`` as fitting the configs at window ``position`` (None: not concrete)."""
    if position is not None:
        key = id(state)
        forget = lambda _, key=key: _issued.pop(key, None)   # noqa: E731 (runs when state dies)
        _issued[key] = (weakref.ref(state, forget), model_cfg, sleep_cfg, position)
    return state


def checked_position(state, model_cfg, sleep_cfg):
    """Check ``state`` against the configs; returns its position (None when traced)."""
    entry = _issued.get(id(state))
    if entry is not None and entry[0]() is state and entry[1] == model_cfg and entry[2] == sleep_cfg:
        return entry[3]
    check_state(state, model_cfg, sleep_cfg)
    return concrete_position(state)


def concrete_position(state):
    # np.asarray first: int() of a jax Array takes a slower path (6 us vs 1 us on CPU)
    return None if isinstance(state.position, jax.core.Tracer) else int(np.asarray(state.position))


def advanced(position, tokens, sleep_cfg):
    """The position after ``tokens`` more wake steps (sleeping when a window fills if
    ``sleep_cfg`` is given; None stays None)."""
    if position is None:
        return None
    return position + tokens if sleep_cfg is None else (position + tokens) % sleep_cfg.window
