"""The parameter layout is declared once (sleepjax.models.params): every parameter the models
create is declared there with one logical axis per dim, and the partition rules and the
documented table say the same as the declarations (abstract shapes only, nothing compiled)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest

import sleepjax.models
from sleepjax.models.baseline import FullAttentionLM
from sleepjax.models.config import ModelConfig, SleepConfig
from sleepjax.models.params import (ADAMW, MUON, PARAM_RULES, PARAM_TEMPLATES, Param, flatten_layout,
                                    layout_options, lm_layout)
from sleepjax.models.sleep_lm import SleepLM
from sleepjax.parallel.logical_axes import LOGICAL_AXIS_RULES, logical_axes_for, path_to_str

CONFIGS = {
    "hybrid, tied": ModelConfig(vocab_size=16, d_model=32, layer_pattern="AG", attn_heads=4,
                                attn_head_dim=8, gdn_heads=4, gdn_head_dim=8, mlp_hidden=64),
    "gdn first, untied, V = 2K": ModelConfig(vocab_size=12, d_model=16, layer_pattern="GGA",
                                             attn_heads=2, attn_head_dim=8, gdn_heads=2,
                                             gdn_head_dim=4, gdn_expand_v=2, tie_embeddings=False),
    "qwen3.5 options, blocks without MLP": ModelConfig(vocab_size=12, d_model=16, layer_pattern="GgAa", attn_heads=4,
                                   attn_kv_heads=2, attn_head_dim=8, attn_output_gate=True,
                                   attn_qk_norm=True, rope_fraction=0.5, zero_centered_norms=True,
                                   gdn_heads=2, gdn_head_dim=4, gdn_value_heads=4,
                                   gdn_value_head_dim=6),
}


def _abstract_params(cfg: ModelConfig, baseline: bool):
    tokens = jnp.zeros((1, 5), jnp.int32)
    model = FullAttentionLM(cfg) if baseline else SleepLM(cfg, SleepConfig(window=4, passes=2))
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)["params"]


def _leaves(tree):
    return {path_to_str(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("baseline", [False, True], ids=["sleep_lm", "baseline"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_parameter_is_declared_with_axes_the_rules_agree_with(name, baseline):
    cfg = CONFIGS[name]
    leaves = _leaves(_abstract_params(cfg, baseline))
    pattern = "A" * cfg.num_layers if baseline else cfg.layer_pattern
    declared = dict(flatten_layout(lm_layout(pattern, cfg.tie_embeddings, layout_options(cfg))))
    # No parameter is created outside the layout tables, and none declared is missing.
    assert set(leaves) == set(declared)
    optimizer_state = _leaves(jax.eval_shape(optax.adamw(1e-3).init, _abstract_params(cfg, baseline)))
    for path, leaf in leaves.items():
        param = declared[path]
        assert leaf.shape == param.shape(cfg), path
        assert len(param.axes) == leaf.ndim, (path, param.axes)
        assert logical_axes_for(path, PARAM_RULES) == param.axes, path
        # optimiser moments mirror the parameter tree under their own prefix
        for moment in ("0/mu/", "0/nu/"):
            assert moment + path in optimizer_state
            assert logical_axes_for(moment + path, PARAM_RULES) == param.axes, moment + path


def test_declared_axes_are_known_logical_axes():
    known = set(LOGICAL_AXIS_RULES) | {None}
    for template, param in PARAM_TEMPLATES.items():
        assert set(param.axes) <= known, (template, param.axes)


def test_non_parameters_are_replicated_and_a_rank_mismatch_is_refused():
    assert logical_axes_for("step", PARAM_RULES) == ()
    assert logical_axes_for("opt_state/0/count", PARAM_RULES) == ()
    with pytest.raises(ValueError, match="logical axes"):
        Param(("d", "F"), ("embed",), lambda cfg: jnp.zeros, optimizer=MUON)
    with pytest.raises(ValueError, match="unknown dim"):
        Param(("width",), ("embed",), lambda cfg: jnp.zeros, optimizer=ADAMW)


def test_documented_table_lists_every_declaration():
    for template, param in PARAM_TEMPLATES.items():
        row = next(line for line in sleepjax.models.__doc__.splitlines()
                   if line.split() and line.split()[0] == template)
        assert "(" + ", ".join(map(str, param.axes)) + ")" in row, row
