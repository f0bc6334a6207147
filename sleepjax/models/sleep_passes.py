"""The loop of sleep passes 2..N over one full window, in the forms training and inference need.

A pass is ``one_pass(carry) -> carry`` with ``carry = (h [B, L, d], fast {name: [B, Hv, K, V]})``
(:func:`sleepjax.models.sleep_lm.sleep_passes` builds it). :func:`run_passes` runs N - 1 of
them and also returns how many passes (the wake pass included) each batch row used:

* **all passes differentiable** -- a ``lax.scan`` of static length N - 1 whose body is
  rematerialised (memory flat in N). The default, and every static N with
  ``backprop == 0`` or N <= ``backprop``.
* **a per-step N** (``extra`` traced; training with ``sleep.train_passes`` or a curriculum) --
  the differentiable passes are a scan over a static number of slots, each slot a ``lax.cond``
  that runs the pass only while passes remain: one compiled program serves every N, and a
  slot that does not run costs nothing, forward or backward.
* **truncated backprop** (``backprop = k >= 1``, training) -- when N > k, the passes before the
  last k run in a ``lax.while_loop`` on a stop-gradient copy of the carry (a traced trip count,
  no gradient, nothing rematerialised); the last k passes start from that detached carry and
  are differentiable. So no gradient reaches the wake pass's fast-weight write or the previous
  windows through this window's sleep; with N <= k nothing is cut.
* **adaptive** (``adaptive_tol > 0``, inference) -- a ``lax.while_loop`` of at most N - 1
  passes that stops, per batch row, after the first pass that changed every looped GDN
  layer's fast weights by less than ``adaptive_tol`` (relative Frobenius norm of the change);
  a row that stopped keeps its carry while the others continue.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

Carry = tuple   # (h [B, L, d], {name: fast weights [B, Hv, K, V]})


@dataclasses.dataclass(frozen=True)
class PassPlan:
    """How a forward runs its sleep passes (static; N itself is passed separately).

    ``backprop``: the last k passes carry gradient (0 = all); ``adaptive_tol``: > 0 stops a
    row's sleep early (inference); ``max_passes``: the largest N this forward can be given
    (the number of differentiable slots when N is traced).
    """

    max_passes: int
    backprop: int = 0
    adaptive_tol: float = 0.0


def _rows(active, tree_new, tree_old):
    """Per batch row: ``tree_new`` where ``active`` [B], else ``tree_old``."""
    def pick(new, old):
        return jnp.where(active.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
    return jax.tree.map(pick, tree_new, tree_old)


def relative_change(new_fast: dict, old_fast: dict):
    """Per row, the largest relative Frobenius change ``|S' - S| / |S|`` over the layers: [B]."""
    changes = []
    for name in new_fast:
        new, old = new_fast[name], old_fast[name]
        axes = tuple(range(1, new.ndim))
        diff = jnp.sqrt(jnp.sum(jnp.square(new - old), axis=axes))
        size = jnp.sqrt(jnp.sum(jnp.square(old), axis=axes))
        changes.append(diff / jnp.maximum(size, jnp.finfo(jnp.float32).tiny))
    return jnp.max(jnp.stack(changes), axis=0)


def _full_scan(one_pass: Callable, carry: Carry, extra: int) -> Carry:
    def body(c, _):
        return one_pass(c), None
    carry, _ = jax.lax.scan(body, carry, None, length=extra)
    return carry


def _slots(one_pass: Callable, carry: Carry, run: jax.Array, slots: int) -> Carry:
    """``slots`` differentiable slots of which the first ``run`` (traced) execute a pass."""
    def body(c, i):
        return jax.lax.cond(i < run, one_pass, lambda x: x, c), None
    carry, _ = jax.lax.scan(body, carry, jnp.arange(slots))
    return carry


def _without_gradient(one_pass_plain: Callable, carry: Carry, count) -> Carry:
    """``count`` (traced or int) passes on a stop-gradient copy of ``carry``."""
    def body(state):
        i, c = state
        return i + 1, one_pass_plain(c)
    _, carry = jax.lax.while_loop(lambda s: s[0] < count, body,
                                  (jnp.asarray(0, jnp.int32), jax.lax.stop_gradient(carry)))
    return carry


def _adaptive(one_pass_plain: Callable, carry: Carry, extra: int, tol: float, batch: int):
    def cond(state):
        i, _, active, _ = state
        return (i < extra) & jnp.any(active)

    def body(state):
        i, c, active, used = state
        new = one_pass_plain(c)
        converged = relative_change(new[1], c[1]) < tol
        return i + 1, _rows(active, new, c), active & ~converged, used + active.astype(jnp.int32)

    init = (jnp.asarray(0, jnp.int32), carry, jnp.ones((batch,), bool),
            jnp.ones((batch,), jnp.int32))
    _, carry, _, used = jax.lax.while_loop(cond, body, init)
    return carry, used


def run_passes(one_pass: Callable, one_pass_plain: Callable, carry: Carry, passes,
               plan: PassPlan) -> tuple[Carry, jax.Array]:
    """Sleep passes 2..``passes`` from ``carry`` (after the wake pass); see the module docstring.

    ``one_pass`` is the (rematerialised) pass used under differentiation, ``one_pass_plain``
    the same pass without remat, for passes that carry no gradient. ``passes`` is N (a Python
    int, or a traced int32 scalar <= ``plan.max_passes``). Returns ``(carry, used [B] int32)``.
    """
    batch = carry[0].shape[0]
    static = isinstance(passes, int)
    if plan.adaptive_tol > 0:
        if not static:
            raise ValueError("sleep.adaptive_tol: adaptive sleep needs a static number of passes")
        return _adaptive(one_pass_plain, carry, passes - 1, plan.adaptive_tol, batch)
    used = jnp.full((batch,), passes, jnp.int32)
    k = plan.backprop
    if static and (k == 0 or passes <= k):
        return (_full_scan(one_pass, carry, passes - 1) if passes > 1 else carry), used
    extra = jnp.asarray(passes - 1, jnp.int32)
    if k:
        prefix = _without_gradient(one_pass_plain, carry, jnp.maximum(extra - k, 0))
        if static:          # passes > k here: the carry is always detached
            carry = prefix
        else:
            carry = jax.tree.map(lambda p, c: jnp.where(extra >= k, p, c), prefix, carry)
        slots = k
    else:
        slots = plan.max_passes - 1
    if static:
        return _full_scan(one_pass, carry, min(passes - 1, slots)), used
    return _slots(one_pass, carry, jnp.minimum(extra, slots), slots), used
