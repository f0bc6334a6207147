"""What crosses a window boundary: :class:`WindowCarry`, one type for the training forward's scan
over windows and for the streaming state (:class:`sleepjax.inference.StreamState` holds one).

Under hard eviction only the GDN fast weights S cross a boundary. Under sliding eviction the
last ``L - 1`` wake-pass keys and values of every attention layer cross it too, with a flag
that says whether a boundary has been crossed yet (before the first one there is nothing to
attend to). Each leaf declares its logical axes here (:func:`carry_logical_axes`), so the
streaming state's shardings are derived from the type rather than matched by name elsewhere.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from sleepjax.models import layers
from sleepjax.models.attention import KVCache, shift_to_previous_window
from sleepjax.models.blocks import attn_layer_names, zero_fast_weights
from sleepjax.models.config import ModelConfig, SleepConfig
from sleepjax.models.gated_deltanet import GDNCache



class LogicalAxes(tuple):
    """Logical axis names of one array; a pytree leaf (unlike a plain tuple)."""


FAST_WEIGHT_AXES = LogicalAxes(("batch", "heads", "head_dim", "head_dim"))   # [B, Hv, K, V]
KV_AXES = LogicalAxes(("batch", "length", "heads", "head_dim"))              # [B, slots, Hkv, D]
CONV_AXES = LogicalAxes(("batch", "length", "heads"))                        # [B, W-1, H*D]
REPLICATED = LogicalAxes(())                                                 # scalars


@flax.struct.dataclass
class WindowCarry:
    """The state carried from one window to the next.

    Attributes:
      caches: ``{blocks_i: layer cache}``. In the window scan of the training forward and
        prefill, one :class:`GDNCache` (fast weights, no conv history) per GDN layer; in
        streaming, every layer's cache of the open window (GDN fast weights and short-conv
        history, attention :class:`KVCache`).
      previous_kv: sliding eviction: ``{blocks_i: (keys, values) [B, L-1, Hkv, D]}`` the previous
        window's last ``L - 1`` wake-pass tokens, keys rotated to positions ``-(L-1)..-1``;
        ``{}`` under hard eviction.
      previous_visible: bool scalar, True once a window boundary has been crossed (the
        ``previous_kv`` slots hold real tokens).
    """

    caches: dict
    previous_kv: dict
    previous_visible: jax.Array

    @property
    def fast_weights(self) -> dict:
        """``{blocks_i: S [B, Hv, K, V]}`` of every GDN layer in ``caches``."""
        return {name: c.fast_weights for name, c in self.caches.items() if isinstance(c, GDNCache)}


def fast_weight_caches(fast: dict) -> dict:
    """``{blocks_i: S}`` -> GDN caches at a window start (no conv history)."""
    return {name: GDNCache(state) for name, state in fast.items()}


def zero_previous_kv(cfg: ModelConfig, sleep_cfg: SleepConfig, batch_size: int) -> dict:
    """Sliding eviction's previous-window K/V before the first boundary (``{}`` if hard)."""
    if sleep_cfg.eviction != "sliding":
        return {}
    shape = (batch_size, sleep_cfg.window - 1, cfg.attn_kv_heads, cfg.attn_head_dim)
    dt = layers.compute_dtype(cfg)
    return {name: (jnp.zeros(shape, dt), jnp.zeros(shape, dt)) for name in attn_layer_names(cfg)}


def evicted_kv(kv: dict, cfg: ModelConfig, sleep_cfg: SleepConfig) -> dict:
    """What attention hands to the next window from its wake-pass ``{blocks_i: (k, v)}``: under
    sliding eviction the last ``L - 1`` tokens (keys re-rotated by ``-L``), else nothing."""
    if sleep_cfg.eviction != "sliding":
        return {}
    return {name: shift_to_previous_window(k, v, cfg, sleep_cfg.window)
            for name, (k, v) in kv.items()}


def initial_carry(cfg: ModelConfig, sleep_cfg: SleepConfig, batch_size: int) -> WindowCarry:
    """A sequence start: S = 0 (Algorithm 1, line 1), nothing from a previous window."""
    return WindowCarry(caches=fast_weight_caches(zero_fast_weights(cfg, batch_size)),
                       previous_kv=zero_previous_kv(cfg, sleep_cfg, batch_size),
                       previous_visible=jnp.asarray(False))


def carry_logical_axes(carry: WindowCarry) -> WindowCarry:
    """The logical axes of every leaf of ``carry``: the same tree with :class:`LogicalAxes` leaves.

    Fast weights and attention caches split batch over the data axes and heads over ``model``
    (the recurrence then needs no communication); the short-conv histories split on head
    boundaries like the projections that fill them."""
    def cache_axes(cache):
        if isinstance(cache, KVCache):
            return KVCache(KV_AXES, KV_AXES)
        conv = None if cache.conv is None else {name: CONV_AXES for name in cache.conv}
        return GDNCache(FAST_WEIGHT_AXES, conv)

    return WindowCarry(
        caches={name: cache_axes(c) for name, c in carry.caches.items()},
        previous_kv={name: (KV_AXES, KV_AXES) for name in carry.previous_kv},
        previous_visible=REPLICATED)
