"""Optimizer: Muon on hidden matrices only, AdamW on the rest; the WSD schedule's shape."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleepjax.models import SleepLM
from sleepjax.models.params import PARAM_TEMPLATES, Param
from sleepjax.training.config import OptimConfig, validate_config
from sleepjax.training.optimizer import ADAMW, MUON, make_optimizer, param_labels, warmup_stable_decay
from sleepjax.parallel.logical_axes import path_to_str

from support.training import tiny_config


def _abstract_params(**overrides):
    rc = validate_config(tiny_config(**overrides))
    model = SleepLM(rc.model, rc.sleep)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, rc.seq_len), jnp.int32)))["params"]


def _expected(path: str, ndim: int) -> str:
    """The paper's rule, stated on paths: hidden 2-D matrices are Muon's."""
    leaf = path.split("/")[-1]
    hidden = ndim == 2 and not path.startswith(("embed", "head")) and "conv" not in leaf \
        and "norm" not in path
    return MUON if hidden else ADAMW


def test_every_declared_group_follows_the_rule():
    """Every parameter any config can have (all block kinds and options, an untied head)."""
    for template, param in PARAM_TEMPLATES.items():
        assert param.optimizer == _expected(template, len(param.dims)), template


def test_every_param_gets_exactly_the_intended_label():
    params = _abstract_params(model__layer_pattern="AG", model__tie_embeddings=False)
    labels = param_labels(params)
    flat_params = {path_to_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)}
    flat_labels = {path_to_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(labels)}
    assert flat_params.keys() == flat_labels.keys()           # one label per param, no extras
    for path, leaf in flat_params.items():
        assert flat_labels[path] == _expected(path, leaf.ndim), path
    muon = sorted(p for p, l in flat_labels.items() if l == MUON)
    # The hidden matrices of both block kinds are in the Muon group ...
    for name in ("blocks_0/attn/wq", "blocks_0/attn/wo", "blocks_0/mlp/w_up", "blocks_1/gdn/wq",
                 "blocks_1/gdn/wo", "blocks_1/gdn/wa", "blocks_1/mlp/w_down"):
        assert name in muon, (name, muon)
    # ... and the embedding, head, convolutions, norms and decay parameters are not.
    for name in ("embed/embedding", "head/kernel", "blocks_1/gdn/conv_q", "blocks_1/gdn/A_log",
                 "blocks_1/gdn/dt_bias", "final_norm/scale", "blocks_0/mixer_norm/scale"):
        assert flat_labels[name] == ADAMW, name


def test_undeclared_or_misshapen_parameters_are_refused():
    with pytest.raises(ValueError, match="blocks_0/attn/bias: no parameter of the layout"):
        param_labels({"blocks_0": {"attn": {"bias": jnp.zeros((4, 4))}}})
    with pytest.raises(ValueError, match=r"blocks_3/mlp/w_gate: shape \(2, 4, 4\) does not have"):
        param_labels({"blocks_3": {"mlp": {"w_gate": jnp.zeros((2, 4, 4))}}})
    with pytest.raises(ValueError, match="Muon orthogonalises matrices"):
        Param(("d",), (None,), lambda cfg: jnp.zeros, optimizer=MUON)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        Param(("d",), (None,), lambda cfg: jnp.zeros, optimizer="sgd")


def test_muon_update_is_orthogonalised_and_adamw_is_not():
    params = {"blocks_0": {"mlp": {"w_up": jnp.zeros((16, 8))}}, "embed": {"embedding": jnp.zeros((5, 8))}}
    grads = jax.tree.map(lambda x: jax.random.normal(jax.random.PRNGKey(1), x.shape), params)
    cfg = OptimConfig(muon_lr=1.0, adam_lr=1.0, weight_decay=0.0, adam_weight_decay=0.0,
                      warmup_fraction=0.0, decay_fraction=0.0, clip_norm=0.0)
    opt = make_optimizer(cfg, total_steps=10)
    updates, _ = opt.update(grads, opt.init(params), params)
    singular = np.linalg.svd(np.asarray(updates["blocks_0"]["mlp"]["w_up"]), compute_uv=False)
    raw = np.linalg.svd(np.asarray(grads["blocks_0"]["mlp"]["w_up"]), compute_uv=False)
    # Newton-Schulz (quintic, 5 steps) squeezes the spread of singular values into ~[0.7, 1.2].
    assert raw.max() / raw.min() > 3.0
    assert singular.max() / singular.min() < 1.8 and 0.6 < singular.min() and singular.max() < 1.25
    # AdamW's first step is -lr * sign(g) (bias-corrected m / sqrt(v)).
    emb = np.asarray(updates["embed"]["embedding"])
    np.testing.assert_allclose(np.abs(emb), 1.0, rtol=1e-3)


def test_clipping_bounds_the_global_norm():
    params = {"embed": {"embedding": jnp.zeros((4, 4))}}
    grads = {"embed": {"embedding": jnp.full((4, 4), 100.0)}}
    cfg = OptimConfig(adam_lr=1.0, clip_norm=1.0, warmup_fraction=0.0, decay_fraction=0.0,
                      adam_b1=0.0, adam_b2=0.0, adam_weight_decay=0.0)
    opt = make_optimizer(cfg, total_steps=10)
    state = opt.init(params)
    _, state = opt.update(grads, state, params)
    # The AdamW second moment (b2 = 0) holds the squared *clipped* gradient: norm 1 over 16 entries.
    nu = jax.tree.leaves(state[1].inner_states[ADAMW].inner_state[0].nu)[0]
    np.testing.assert_allclose(np.asarray(nu), (1.0 / 4) ** 2, rtol=1e-4)


def test_warmup_stable_decay_shape():
    s = warmup_stable_decay(2.0, total_steps=100, warmup_fraction=0.1, decay_fraction=0.3,
                            min_lr_ratio=0.01)
    values = np.array([float(s(i)) for i in range(101)])
    assert values[0] == 0.0
    np.testing.assert_allclose(values[5], 1.0, rtol=1e-6)          # half-way up the warm-up
    assert np.all(np.diff(values[:11]) > 0)                          # rising warm-up
    np.testing.assert_allclose(values[10:71], 2.0)                    # stable phase
    assert np.all(np.diff(values[70:]) < 0)                           # decaying
    np.testing.assert_allclose(values[100], 0.02, rtol=1e-5)          # floor = min_lr_ratio * peak
    no_warmup = warmup_stable_decay(1.0, 10, 0.0, 0.0, 0.1)
    np.testing.assert_allclose([float(no_warmup(i)) for i in range(10)], 1.0)
    with pytest.raises(ValueError, match="train.steps"):
        warmup_stable_decay(1.0, 0, 0.1, 0.1, 0.1)
