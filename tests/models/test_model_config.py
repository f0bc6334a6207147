"""ModelConfig.replace derives the defaulted fields again; dataclasses.replace cannot."""

import dataclasses
import pickle

import pytest

from sleepjax.models import ModelConfig


def test_replace_derives_the_defaulted_fields_from_the_new_values():
    cfg = ModelConfig(vocab_size=11, d_model=64, attn_heads=4, gdn_heads=2, gdn_head_dim=8,
                      gdn_expand_v=2)
    assert (cfg.gdn_value_heads, cfg.gdn_value_head_dim, cfg.attn_kv_heads) == (2, 16, 4)
    new = cfg.replace(gdn_heads=4, gdn_head_dim=16, attn_heads=2, d_model=128, norm_eps=1e-5)
    assert (new.gdn_value_heads, new.gdn_value_head_dim) == (4, 32)   # expand_v 2 kept
    assert (new.attn_kv_heads, new.gdn_norm_eps, new.mlp_hidden) == (2, 1e-5, 384)
    assert new == ModelConfig(vocab_size=11, d_model=128, attn_heads=2, gdn_heads=4,
                              gdn_head_dim=16, gdn_expand_v=2, norm_eps=1e-5)
    # the dataclasses route keeps the old derived value heads, which no longer divide
    with pytest.raises(ValueError, match="model.gdn_value_heads: must be a multiple"):
        dataclasses.replace(cfg, gdn_heads=4)


def test_replace_keeps_the_fields_that_were_given():
    cfg = ModelConfig(vocab_size=11, attn_heads=4, attn_kv_heads=2, gdn_heads=2,
                      gdn_value_heads=4, gdn_value_head_dim=24, mlp_hidden=96)
    new = cfg.replace(gdn_heads=4, attn_heads=8)
    assert (new.attn_kv_heads, new.gdn_value_heads, new.gdn_value_head_dim, new.mlp_hidden) \
        == (2, 4, 24, 96)
    assert cfg.replace() == cfg
    with pytest.raises(ValueError, match="model.gdn_value_heads: must be a multiple of gdn_heads=8"):
        cfg.replace(gdn_heads=8)


def test_what_was_given_is_not_part_of_equality_hash_or_pickle():
    derived = ModelConfig(vocab_size=11, gdn_heads=2)
    explicit = ModelConfig(vocab_size=11, gdn_heads=2, gdn_value_heads=2)
    assert derived == explicit and hash(derived) == hash(explicit)
    assert [f.name for f in dataclasses.fields(derived)].count("_given") == 0
    restored = pickle.loads(pickle.dumps(derived))
    assert restored == derived and restored.replace(gdn_heads=4).gdn_value_heads == 4
