"""The parameter layout of the LM, declared once: name, shape, initialiser, logical axes and
optimiser group.

Every parameter is one :class:`Param` in the layout tables below; from them come

* the linen declaration (:func:`declare_lm_params`, which :class:`SleepLM` and the baseline
  call), so the computation in :mod:`sleepjax.models.layers` / :mod:`sleepjax.models.sleep_lm`
  reads a plain dict of arrays,
* the partition rules (:data:`PARAM_RULES`, used by :mod:`sleepjax.parallel.state_shardings`),
* the optimiser's partition into Muon and AdamW (:func:`param_at`, read by
  :mod:`sleepjax.training.optimizer`),
* the checkpoint loaders' tensor shapes (:func:`sizes`, read by :mod:`sleepjax.pretrained`),
* the documented parameter table (:func:`param_table`, appended to ``sleepjax.models``' docstring).

Logical axes name each dim of a parameter (MaxText style); :mod:`sleepjax.parallel.logical_axes`
maps them to mesh axes: ``embed`` (d_model, FSDP-sharded), ``heads`` (a head-major ``H*D``
packing or ``H``), ``mlp`` (SwiGLU hidden), ``vocab``; ``None`` = never split. Kernels are
``[in, out]``: q/k/v/gate projections are column-parallel, output projections row-parallel.

Optimiser groups (McLeish et al., whom the paper follows): Muon for every hidden weight
matrix (the projections inside the blocks), AdamW for the rest: the embedding, the LM head,
norm scales, the short-convolution kernels and the decay parameters ``A_log``, ``dt_bias``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from sleepjax.models.config import ModelConfig


def _trunc_normal(std):
    # truncated at 2 std, rescaled so the std is the requested one (as in lecun_normal)
    return nn.initializers.truncated_normal(stddev=std / 0.87962566103423978)


def _fan_in(fan_in, gain=1.0):
    return _trunc_normal(gain / math.sqrt(fan_in))


def _residual_out(fan_in, num_layers):
    # GPT-2 style: shrink the residual out-projections so the stream's scale does not grow with depth
    return _fan_in(fan_in, 1.0 / math.sqrt(2 * num_layers))


def _uniform(bound):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def _a_log_init(key, shape, dtype=jnp.float32):
    # A ~ U(0, 16) as in fla's GatedDeltaNet; tiny floor keeps log finite
    a = jax.random.uniform(key, shape, jnp.float32, 0.0, 16.0)
    return jnp.log(jnp.maximum(a, 1e-4)).astype(dtype)


def _dt_bias_init(key, shape, dtype=jnp.float32, dt_min=1e-3, dt_max=0.1, dt_floor=1e-4):
    # dt ~ logU[dt_min, dt_max]; store softplus^{-1}(dt) so softplus(0 + dt_bias) = dt at init
    u = jax.random.uniform(key, shape, jnp.float32)
    dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = jnp.maximum(dt, dt_floor)
    return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)


# Optimiser groups a parameter can declare (training.optimizer builds one transform for each).
MUON = "muon"
ADAMW = "adamw"
OPTIMIZER_GROUPS = (MUON, ADAMW)

# Sizes, by the symbols parameter shapes are written in (and the parameter table shows).
SIZES: dict[str, Callable[[ModelConfig], int]] = {
    "d": lambda c: c.d_model,
    "vocab": lambda c: c.vocab_size,
    "Ha*Da": lambda c: c.attn_heads * c.attn_head_dim,
    "Hkv*Da": lambda c: c.attn_kv_heads * c.attn_head_dim,
    "Da": lambda c: c.attn_head_dim,
    "Hg*K": lambda c: c.gdn_heads * c.gdn_head_dim,
    "Hv*V": lambda c: c.gdn_value_heads * c.gdn_value_head_dim,
    "Hv": lambda c: c.gdn_value_heads,
    "V": lambda c: c.gdn_value_head_dim,
    "F": lambda c: c.mlp_hidden,
    "conv_size": lambda c: c.conv_size,
}


def sizes(cfg: ModelConfig) -> dict[str, int]:
    """Every symbol of :data:`SIZES` -> its size under ``cfg``."""
    return {symbol: size(cfg) for symbol, size in SIZES.items()}


@dataclasses.dataclass(frozen=True)
class Param:
    """One parameter: its dims (symbols of :data:`SIZES`), the logical axis of each dim, its
    initialiser given the config, and its optimiser group (:data:`OPTIMIZER_GROUPS`; Muon
    only for matrices)."""

    dims: tuple[str, ...]
    axes: tuple[str | None, ...]
    init: Callable[[ModelConfig], Callable]
    note: str = ""
    optimizer: str = dataclasses.field(kw_only=True)

    def __post_init__(self):
        unknown = [d for d in self.dims if d not in SIZES]
        if unknown:
            raise ValueError(f"Param: unknown dim symbol(s) {unknown}; known: {sorted(SIZES)}")
        if len(self.axes) != len(self.dims):
            raise ValueError(f"Param: {len(self.axes)} logical axes {self.axes} for the "
                             f"{len(self.dims)} dims {self.dims}")
        if self.optimizer not in OPTIMIZER_GROUPS:
            raise ValueError(f"Param: optimizer must be one of {OPTIMIZER_GROUPS}, got {self.optimizer!r}")
        if self.optimizer == MUON and len(self.dims) != 2:
            raise ValueError(f"Param: Muon orthogonalises matrices; dims {self.dims} are not 2-D")

    def shape(self, cfg: ModelConfig) -> tuple[int, ...]:
        return tuple(SIZES[d](cfg) for d in self.dims)


def _projection(fan_in: str, fan_out: str, axes, note="", residual=False, optimizer=MUON) -> Param:
    """A dense kernel ``[fan_in, fan_out]``, by default a hidden matrix (Muon); ``residual``:
    an out-projection into the stream."""
    if residual:
        init = lambda c: _residual_out(SIZES[fan_in](c), c.num_layers)  # noqa: E731
    else:
        init = lambda c: _fan_in(SIZES[fan_in](c))                       # noqa: E731
    return Param((fan_in, fan_out), tuple(axes), init, note, optimizer=optimizer)


def _norm(dim: str, note="", zero_centered_switch=True) -> dict[str, Param]:
    """A norm scale; with ``zero_centered_norms`` (and the switch) it is stored as ``w`` of a
    ``(1 + w)`` scaling, so it starts at 0 and weight decay pulls it towards identity."""
    def init(c):
        zero = zero_centered_switch and c.zero_centered_norms
        return nn.initializers.zeros if zero else nn.initializers.ones
    # norm scales are small and read by every shard: replicated
    return {"scale": Param((dim,), (None,), init, note, optimizer=ADAMW)}


_COLUMN, _ROW = ("embed", "heads"), ("heads", "embed")

ATTENTION: dict[str, Param] = {
    "wq": _projection("d", "Ha*Da", _COLUMN, "in 'A' blocks"),
    "wk": _projection("d", "Hkv*Da", _COLUMN, "Hkv = attn_kv_heads"),
    "wv": _projection("d", "Hkv*Da", _COLUMN),
    "wo": _projection("Ha*Da", "d", _ROW, residual=True),
}
# Optional attention parameters, by the ModelConfig switch that adds them.
ATTENTION_OPTIONS: dict[str, dict[str, Any]] = {
    "attn_output_gate": {"wg": _projection("d", "Ha*Da", _COLUMN, "attn_output_gate")},
    "attn_qk_norm": {"q_norm": _norm("Da", "attn_qk_norm"), "k_norm": _norm("Da")},
}

_CONV_INIT = lambda c: _uniform(1.0 / math.sqrt(c.conv_size))  # noqa: E731  (PyTorch Conv1d default)

GATED_DELTANET: dict[str, Any] = {
    "wq": _projection("d", "Hg*K", _COLUMN, "in 'G' blocks"),
    "wk": _projection("d", "Hg*K", _COLUMN),
    "wv": _projection("d", "Hv*V", _COLUMN, "Hv = gdn value heads"),
    "wa": _projection("d", "Hv", _COLUMN, "decay input"),
    "wb": _projection("d", "Hv", _COLUMN, "write strength beta"),
    "wg": _projection("d", "Hv*V", _COLUMN, "output gate"),
    "wo": _projection("Hv*V", "d", _ROW, residual=True),
    "conv_q": Param(("conv_size", "Hg*K"), (None, "heads"), _CONV_INIT, "depthwise causal short conv",
                    optimizer=ADAMW),
    "conv_k": Param(("conv_size", "Hg*K"), (None, "heads"), _CONV_INIT, optimizer=ADAMW),
    "conv_v": Param(("conv_size", "Hv*V"), (None, "heads"), _CONV_INIT, optimizer=ADAMW),
    "A_log": Param(("Hv",), ("heads",), lambda c: _a_log_init, "g = -exp(A_log) softplus(x wa + dt_bias)",
                   optimizer=ADAMW),
    "dt_bias": Param(("Hv",), ("heads",), lambda c: _dt_bias_init, optimizer=ADAMW),
    "out_norm": _norm("V", "gated RMSNorm, shared by heads; never zero-centred",
                      zero_centered_switch=False),
}

MLP: dict[str, Param] = {
    "w_gate": _projection("d", "F", ("embed", "mlp"), "SwiGLU"),
    "w_up": _projection("d", "F", ("embed", "mlp")),
    "w_down": _projection("F", "d", ("mlp", "embed"), residual=True),
}

# Block kind of ``ModelConfig.layer_pattern`` -> (name of its mixer, the mixer's parameters).
MIXERS: dict[str, tuple[str, dict[str, Any]]] = {"A": ("attn", ATTENTION), "G": ("gdn", GATED_DELTANET)}

EMBED = {"embedding": Param(("vocab", "d"), ("vocab", "embed"),
                            lambda c: _trunc_normal(1.0 / math.sqrt(c.d_model)),
                            "also the head when tie_embeddings", optimizer=ADAMW)}
HEAD = {"kernel": _projection("d", "vocab", ("embed", "vocab"), "only when not tie_embeddings",
                              optimizer=ADAMW)}


def block_layout(kind: str, options: frozenset = frozenset()) -> dict[str, Any]:
    """Pre-norm block: ``mixer_norm``, ``attn`` or ``gdn``, ``mlp_norm``, ``mlp``; a lowercase
    ``kind`` (``a`` / ``g``) is the block without ``mlp_norm`` and ``mlp``.

    ``options``: the names of the switched-on :data:`ATTENTION_OPTIONS`.
    """
    mixer_name, mixer = MIXERS[kind.upper()]
    if kind.upper() == "A":
        mixer = dict(mixer)
        for option, extra in ATTENTION_OPTIONS.items():
            if option in options:
                mixer.update(extra)
    if not kind.isupper():
        return {"mixer_norm": _norm("d"), mixer_name: mixer}
    return {"mixer_norm": _norm("d"), mixer_name: mixer, "mlp_norm": _norm("d"), "mlp": MLP}


def layout_options(cfg: ModelConfig) -> frozenset:
    """The switches of ``cfg`` that add parameters."""
    return frozenset(name for name in ATTENTION_OPTIONS if getattr(cfg, name))


def lm_layout(pattern: str, tie_embeddings: bool, options: frozenset = frozenset()) -> dict[str, Any]:
    """The whole LM's parameters as a nested dict of :class:`Param` (declaration order)."""
    layout: dict[str, Any] = {"embed": EMBED}
    for i, kind in enumerate(pattern):
        layout[f"blocks_{i}"] = block_layout(kind, options)
    layout["final_norm"] = _norm("d")
    if not tie_embeddings:
        layout["head"] = HEAD
    return layout


def flatten_layout(layout: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Param]]:
    """``[('/'-joined path, Param)]`` of a (nested) layout, in declaration order."""
    rows = []
    for name, item in layout.items():
        path = f"{prefix}{name}"
        rows.extend([(path, item)] if isinstance(item, Param) else flatten_layout(item, path + "/"))
    return rows


class ParamGroup(nn.Module):
    """Declares one group of a layout: its parameters, then each sub-group as a submodule."""

    layout: Mapping[str, Any]
    cfg: ModelConfig

    @nn.compact
    def __call__(self):
        for name, item in self.layout.items():
            if isinstance(item, Param):
                self.param(name, item.init(self.cfg), item.shape(self.cfg))
            else:
                ParamGroup(item, self.cfg, name=name)()


def declare_lm_params(cfg: ModelConfig, pattern: str | None = None):
    """Declare the whole LM's parameters inside a compact linen ``__call__``."""
    for name, group in lm_layout(pattern or cfg.layer_pattern, cfg.tie_embeddings,
                                 layout_options(cfg)).items():
        ParamGroup(group, cfg, name=name)()


def _template(path: str) -> str:
    return re.sub(r"^blocks_\d+/", "blocks_{i}/", path)


def _param_templates() -> dict[str, Param]:
    """``blocks_{i}/...`` path template -> Param, over every parameter any config can have
    (blocks of every kind with every option, an untied head)."""
    templates: dict[str, Param] = {}
    every_option = frozenset(ATTENTION_OPTIONS)
    for path, param in flatten_layout(lm_layout("".join(MIXERS), tie_embeddings=False,
                                                options=every_option)):
        template = _template(path)
        seen = templates.setdefault(template, param)
        if (seen.axes, seen.optimizer) != (param.axes, param.optimizer):
            raise ValueError(f"{template}: declared with logical axes {seen.axes} and optimizer "
                             f"{seen.optimizer!r} in one block kind and {param.axes}, "
                             f"{param.optimizer!r} in another")
    return templates


PARAM_TEMPLATES: dict[str, Param] = _param_templates()


def param_at(path: str) -> Param:
    """The declaration of the parameter at the '/'-joined ``path`` of a parameter tree
    (``blocks_3/gdn/wq``); ValueError naming the path if the layout has none there."""
    try:
        return PARAM_TEMPLATES[_template(path)]
    except KeyError:
        raise ValueError(f"{path}: no parameter of the layout (sleepjax.models.params) has this "
                         f"path; known: {sorted(PARAM_TEMPLATES)}") from None

# Ordered (regex on the '/'-joined leaf path -> logical axes) rules, first hit wins; read by
# ``sleepjax.parallel.state_shardings``. A suffix match, so optimiser moments
# (``opt_state/0/mu/blocks_0/attn/wq``) follow their parameter; every other leaf (step,
# optimiser counters, PRNG key) is replicated.
PARAM_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = tuple(
    (r"(^|/)" + re.escape(t).replace(re.escape("blocks_{i}"), r"blocks_\d+") + "$", p.axes)
    for t, p in PARAM_TEMPLATES.items()) + ((r".*", ()),)


def param_table() -> str:
    """The parameter tree as a text table: path, shape, logical axes, optimiser group, note."""
    rows = [(t, "[" + ", ".join(p.dims) + "]", "(" + ", ".join(map(str, p.axes)) + ")", p.optimizer, p.note)
            for t, p in PARAM_TEMPLATES.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(f"    {t:<{widths[0]}}  {s:<{widths[1]}}  {a:<{widths[2]}}  {o:<{widths[3]}}  {n}".rstrip()
                     for t, s, a, o, n in rows)
