"""Model surgery: inserting fresh GDN blocks into a parameter tree (sleepjax.models.surgery)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleepjax.models import ModelConfig, SleepConfig, forward_sequence, init_params
from sleepjax.models.surgery import init_blocks, insert_blocks, inserted_pattern

CFG = ModelConfig(vocab_size=11, d_model=32, layer_pattern="AGA", attn_heads=2, attn_head_dim=16,
                  gdn_heads=2, gdn_head_dim=16, mlp_hidden=64, gdn_chunk_size=8)


def _kinds():
    """'G' always; 'g' (no MLP) once ModelConfig knows it."""
    try:
        dataclasses.replace(CFG, layer_pattern="AgG")
        return ("G", "g")
    except ValueError:
        return ("G",)


def _leaves(tree):
    return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_pattern_convention_and_bad_positions():
    assert inserted_pattern("AAAA", (0,), "g") == "gAAAA"
    assert inserted_pattern("AAAA", (4,), "g") == "AAAAg"
    assert inserted_pattern("AAAA", (3, 1), "g") == "AgAgAA"
    assert inserted_pattern("AAAA", (2, 3), "g") == "AAggAA"
    params = init_params(CFG, jax.random.PRNGKey(0))
    for bad, words in (((4,), "[0, 4)"), ((1, 1), "distinct"), ((), "at least one"),
                       ((-1,), "out of range"), ((1.0,), "ints"), ("1", "sequence")):
        with pytest.raises(ValueError, match="positions") as info:
            insert_blocks(params, CFG, bad, "G", jax.random.PRNGKey(1))
        assert words in str(info.value)
    with pytest.raises(ValueError, match="kind"):
        insert_blocks(params, CFG, (1,), "A", jax.random.PRNGKey(1))
    with pytest.raises(ValueError, match="params: do not match"):
        insert_blocks(params, dataclasses.replace(CFG, layer_pattern="AGAG"), (1,), "G",
                      jax.random.PRNGKey(1))


@pytest.mark.parametrize("kind", _kinds())
def test_old_blocks_preserved_new_blocks_as_init_params(kind):
    params = init_params(CFG, jax.random.PRNGKey(0))
    rng = jax.random.PRNGKey(7)
    new, new_cfg = insert_blocks(params, CFG, (0, 2), kind, rng)
    assert new_cfg.layer_pattern == f"{kind}A{kind}GA"
    assert dataclasses.replace(new_cfg, layer_pattern=CFG.layer_pattern) == CFG
    # the tree is exactly init_params' tree for the new config
    reference = jax.eval_shape(lambda: init_params(new_cfg, rng))
    assert jax.tree.structure(new) == jax.tree.structure(reference)
    assert set(new) == set(reference)
    for (path, a), b in zip(_leaves(new).items(), jax.tree.leaves(reference)):
        assert a.shape == b.shape and a.dtype == b.dtype, path
    # old blocks moved unchanged (the same arrays), the rest untouched
    for old_i, new_i in ((0, 1), (1, 3), (2, 4)):
        for a, b in zip(jax.tree.leaves(params[f"blocks_{old_i}"]),
                        jax.tree.leaves(new[f"blocks_{new_i}"])):
            assert a is b
    for name in ("embed", "final_norm"):
        assert new[name] is params[name]
    # the new blocks are bitwise init_params(new_cfg, rng)'s blocks of that name
    full = init_params(new_cfg, rng)
    for name in ("blocks_0", "blocks_2"):
        assert "gdn" in new[name] and (("mlp" in new[name]) == (kind == "G"))
        for (path, a), b in zip(_leaves(new[name]).items(), jax.tree.leaves(full[name])):
            np.testing.assert_array_equal(a, b, err_msg=path)
    assert float(jnp.std(new["blocks_0"]["gdn"]["wq"])) > 0
    assert init_blocks(new_cfg, ["blocks_2"], rng).keys() == {"blocks_2"}


@pytest.mark.slow
@pytest.mark.parametrize("kind", _kinds())
def test_zero_output_blocks_leave_the_logits_unchanged(kind):
    params = init_params(CFG, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(3), (2, 20), 0, CFG.vocab_size)
    new, new_cfg = insert_blocks(params, CFG, (1, 4), kind, jax.random.PRNGKey(5),
                                 zero_output=True)
    assert not np.any(new["blocks_1"]["gdn"]["wo"])
    for passes in (1, 2):
        sleep = SleepConfig(window=8, passes=passes)
        before = forward_sequence(params, tokens, CFG, sleep)
        after = forward_sequence(new, tokens, new_cfg, sleep)
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    # without zero_output the new blocks change the function (and a forward runs)
    noisy, _ = insert_blocks(params, CFG, (1, 4), kind, jax.random.PRNGKey(5))
    out = forward_sequence(noisy, tokens, new_cfg, SleepConfig(window=8, passes=1))
    assert out.shape == (2, 20, CFG.vocab_size) and bool(jnp.all(jnp.isfinite(out)))
    assert not np.allclose(out, forward_sequence(params, tokens, CFG, SleepConfig(window=8)))
