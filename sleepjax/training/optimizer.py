"""The paper's optimiser: Muon for hidden weight matrices, AdamW for the rest.

Which group a parameter belongs to is declared with it (``Param.optimizer`` in
:mod:`sleepjax.models.params`, following McLeish et al., whom the paper follows: Muon for the
hidden 2-D weight matrices; embeddings, the LM head, norm scales, the short-convolution
kernels and the Gated DeltaNet decay parameters go to AdamW); this module reads the
declarations. The global gradient norm is clipped first, and both learning rates follow one
warmup-stable-decay multiplier.
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from optax import contrib as optax_contrib

from sleepjax.models.params import ADAMW, MUON, param_at
from sleepjax.parallel.logical_axes import path_to_str
from sleepjax.training.config import OptimConfig
from sleepjax.training.param_groups import FROZEN, TRAINABLE, trainable_labels

def _declared_group(path: str, leaf) -> str:
    param = param_at(path)
    if len(leaf.shape) != len(param.dims):
        raise ValueError(f"{path}: shape {tuple(leaf.shape)} does not have the declared dims "
                         f"{list(param.dims)}")
    return param.optimizer


def param_labels(params) -> Any:
    """A pytree like ``params`` whose leaves are the optimiser group (``"muon"`` or
    ``"adamw"``) each parameter declares; ValueError for a leaf the layout does not declare."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: _declared_group(path_to_str(path), leaf), params)


def warmup_stable_decay(peak: float, total_steps: int, warmup_fraction: float,
                        decay_fraction: float, min_lr_ratio: float) -> optax.Schedule:
    """Linear warm-up 0 -> ``peak``, constant ``peak``, linear decay to ``min_lr_ratio * peak``.

    The phases take ``round(warmup_fraction * total_steps)``, the remainder and
    ``round(decay_fraction * total_steps)`` steps; step ``total_steps`` is at the floor.
    """
    if total_steps < 1:
        raise ValueError(f"train.steps: must be a positive int (got {total_steps})")
    warmup = int(round(warmup_fraction * total_steps))
    decay = int(round(decay_fraction * total_steps))
    stable = max(total_steps - warmup - decay, 0)
    floor = peak * min_lr_ratio
    pieces, boundaries = [], []
    if warmup:
        pieces.append(optax.linear_schedule(0.0, peak, warmup))
        boundaries.append(warmup)
    pieces.append(optax.constant_schedule(peak))
    if decay:
        boundaries.append(warmup + stable)
        pieces.append(optax.linear_schedule(peak, floor, decay))
    return optax.join_schedules(pieces, boundaries)


def learning_rate_schedules(optim: OptimConfig, total_steps: int) -> dict:
    """``{MUON: schedule, ADAMW: schedule}``: step -> learning rate of each group (what
    :func:`make_optimizer` applies and the trainer logs)."""
    return {group: warmup_stable_decay(peak, total_steps, optim.warmup_fraction,
                                       optim.decay_fraction, optim.min_lr_ratio)
            for group, peak in ((MUON, optim.muon_lr), (ADAMW, optim.adam_lr))}


def make_optimizer(optim: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """Clip by global norm, then Muon on ``"muon"``-labelled leaves and AdamW on the rest.

    With ``optim.trainable`` (see :class:`~sleepjax.training.config.OptimConfig`) only the
    selected parameters go through that chain: the others get ``optax.set_to_zero`` (exactly
    zero updates, no weight decay), hold no Muon / AdamW moments (``optax.multi_transform``
    hands the inner chain a tree with the frozen leaves masked out) and do not count in the
    clipping norm.
    """
    schedules = learning_rate_schedules(optim, total_steps)
    # Every leaf handed to this Muon is 2-D (``Param`` declares Muon for matrices only), so its
    # built-in Adam fallback for non-matrix leaves stays empty.
    muon = optax_contrib.muon(
        learning_rate=schedules[MUON], ns_steps=optim.muon_ns_steps, beta=optim.muon_beta,
        weight_decay=optim.weight_decay)
    adamw = optax.adamw(
        learning_rate=schedules[ADAMW], b1=optim.adam_b1, b2=optim.adam_b2,
        eps=optim.adam_eps, weight_decay=optim.adam_weight_decay)
    parts = []
    if optim.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(optim.clip_norm))
    parts.append(optax.multi_transform({MUON: muon, ADAMW: adamw}, param_labels))
    chain = optax.chain(*parts)
    patterns = optim.trainable
    if not patterns:
        return chain
    return optax.multi_transform({TRAINABLE: chain, FROZEN: optax.set_to_zero()},
                                 lambda params: trainable_labels(params, patterns))
