"""Model surgery: insert new, freshly initialised blocks into a (pretrained) parameter tree.

Route 2 of the paper's retrofitting recipe (the paper's §3.3 and §7): take a pretrained model and add
Gated DeltaNet memory layers (Ouro 1.4B + 6 Jet layers without MLP), warm up only the new
layers, then fine-tune the whole model. :func:`insert_blocks` does the first step::

    params, cfg = load_pretrained(path)                    # sleepjax.pretrained
    params, cfg = insert_blocks(params, cfg, positions=(4, 9), kind="g", rng=key,
                                zero_output=True)

In a training run the same is configured by the ``init`` section and ``optim.trainable``
(:mod:`sleepjax.training.initialization`).

Position convention: ``positions`` are the indices the new blocks have **in the resulting
model** (sorted, distinct, each in ``[0, D_old + len(positions))``). Every old block keeps its
order; old block ``j`` becomes ``blocks_{j + #(positions <= its new index)}``. Examples with an
old pattern ``"AAAA"``: ``positions=(0,)`` -> ``"gAAAA"`` (before everything), ``(4,)`` ->
``"AAAAg"`` (after everything), ``(1, 3)`` -> ``"AgAgAA"``, ``(2, 3)`` -> ``"AAggAA"``.
Note that ``sleep.loop_range`` indexes the resulting model.
"""

from __future__ import annotations

from typing import Any, Sequence

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from sleepjax.models.config import ModelConfig
from sleepjax.models.params import ParamGroup, layout_options, lm_layout

# Block kinds insert_blocks creates: GDN with ("G") or without ("g") its SwiGLU MLP.
INSERTABLE_KINDS = ("G", "g")
# Out-projections into the residual stream, zeroed by ``zero_output`` (the block then adds
# exactly 0 to the stream at initialisation: an identity block).
_ZEROED_OUTPUTS = (("gdn", "wo"), ("mlp", "w_down"))


def validate_positions(positions, num_old: int, key: str = "positions") -> tuple[int, ...]:
    """``positions`` as a sorted tuple of ints, or ValueError naming ``key`` (see module doc)."""
    if isinstance(positions, (str, bytes)) or not isinstance(positions, Sequence):
        raise ValueError(f"{key}: must be a sequence of block indices (got {positions!r})")
    values = tuple(positions)
    if not values:
        raise ValueError(f"{key}: must name at least one position (got {positions!r})")
    if not all(isinstance(p, int) and not isinstance(p, bool) for p in values):
        raise ValueError(f"{key}: positions must be ints (got {positions!r})")
    if len(set(values)) != len(values):
        raise ValueError(f"{key}: positions must be distinct (got {positions!r})")
    total = num_old + len(values)
    bad = [p for p in values if not 0 <= p < total]
    if bad:
        raise ValueError(f"{key}: positions are indices in the resulting {total}-block model "
                         f"({num_old} old + {len(values)} new), so each must be in [0, {total}); "
                         f"out of range: {bad} (got {positions!r})")
    return tuple(sorted(values))


def inserted_pattern(pattern: str, positions: Sequence[int], kind: str) -> str:
    """The layer pattern after inserting ``kind`` blocks at ``positions`` (resulting indices)."""
    positions = validate_positions(positions, len(pattern))
    new = set(positions)
    old = iter(pattern)
    return "".join(kind if i in new else next(old) for i in range(len(pattern) + len(new)))


class _Blocks(nn.Module):
    """Declares only the named blocks of ``cfg``'s layout, under the names (and so with the
    PRNG streams) they have in :func:`~sleepjax.models.sleep_lm.init_params`."""

    cfg: ModelConfig
    names: tuple[str, ...]

    @nn.compact
    def __call__(self):
        layout = lm_layout(self.cfg.layer_pattern, self.cfg.tie_embeddings,
                           layout_options(self.cfg))
        for name in self.names:
            ParamGroup(layout[name], self.cfg, name=name)()


def init_blocks(cfg: ModelConfig, names: Sequence[str], rng) -> dict[str, Any]:
    """``{blocks_i: params}`` for the named blocks of ``cfg``, bitwise what
    ``init_params(cfg, rng)`` gives them (flax derives each parameter's key from its path), but
    without initialising the rest of the model."""
    return dict(_Blocks(cfg, tuple(names)).init(rng)["params"])


def insert_blocks(params: dict, model_cfg: ModelConfig, positions: Sequence[int], kind: str = "g",
                  rng=None, *, zero_output: bool = False) -> tuple[dict, ModelConfig]:
    """Insert new ``kind`` blocks at ``positions`` of a model: ``(new_params, new_cfg)``.

    Args:
      params: the model's parameter tree (``init_params`` layout: ``embed``, ``blocks_{i}``,
        ``final_norm``, optional ``head``). Not modified; old arrays are reused, not copied.
      model_cfg: its config; the result's ``layer_pattern`` is this one with the new blocks in.
      positions: the new blocks' indices in the resulting model (module docstring).
      kind: ``"G"`` (GDN block with its SwiGLU MLP) or ``"g"`` (GDN block without MLP, as the
        paper's Jet layers inserted into Ouro).
      rng: PRNG key of the new blocks: each is ``init_params(new_cfg, rng)``'s block of that
        name (so the residual out-projections are scaled for the new depth).
      zero_output: zero the new blocks' out-projections into the residual stream (``gdn/wo``
        and, with an MLP, ``mlp/w_down``): each new block then adds exactly 0, so the model
        computes the same function as before (at any number of passes: a zero block leaves
        every other layer's input unchanged) until training moves ``wo``. The usual start
        when converting an attention model into a hybrid (Mamba-in-the-Llama, Jet-Nemotron).
        Their gradients are not zero: ``wo``'s gradient is (GDN output)^T x (upstream grad).

    Raises:
      ValueError: bad ``positions`` or ``kind``, or ``params`` does not have ``model_cfg``'s
        blocks.
    """
    if kind not in INSERTABLE_KINDS:
        raise ValueError(f"kind: must be one of {INSERTABLE_KINDS} (got {kind!r})")
    if rng is None:
        raise ValueError("rng: a PRNG key is required to initialise the new blocks")
    old_names = [f"blocks_{i}" for i in range(model_cfg.num_layers)]
    missing = [n for n in old_names if n not in params]
    extra = sorted(k for k in params if k.startswith("blocks_") and k not in old_names)
    if missing or extra:
        raise ValueError(f"params: do not match model_cfg.layer_pattern="
                         f"{model_cfg.layer_pattern!r} (missing {missing}, unexpected {extra})")
    positions = validate_positions(positions, model_cfg.num_layers)
    new_cfg = dataclasses.replace(
        model_cfg, layer_pattern=inserted_pattern(model_cfg.layer_pattern, positions, kind))
    fresh = init_blocks(new_cfg, [f"blocks_{p}" for p in positions], rng)
    if zero_output:
        fresh = {name: _zero_outputs(block) for name, block in fresh.items()}
    out = {k: v for k, v in params.items() if not k.startswith("blocks_")}
    old = iter(old_names)
    for i in range(new_cfg.num_layers):
        name = f"blocks_{i}"
        out[name] = fresh[name] if i in positions else params[next(old)]
    return out, new_cfg


def _zero_outputs(block: dict) -> dict:
    block = jax.tree.map(lambda x: x, dict(block))   # new containers, same leaves
    for group, name in _ZEROED_OUTPUTS:
        if group in block:
            block[group] = {**block[group], name: jnp.zeros_like(block[group][name])}
    return block
