"""Checkpoint files: bf16 and sharded checkpoints, clear errors, config mapping, tokenizer, RoPE."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import AutoModelForCausalLM, Qwen3_5TextConfig
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5TextRotaryEmbedding

from sleepjax.pretrained import (hf_config_from_model, load_pretrained, load_tokenizer,
                                 model_config_from_hf)
from tiny_qwen import (REL_TOL, causal_lm, reference_logits, rel_err, sleepjax_logits,
                       text_config_kwargs, tokens)

CASE = "grouped-untied-rotary0.25"


def _leaves(params):
    return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}


def test_bf16_checkpoint_loads_as_float32_or_bfloat16(tmp_path):
    model = causal_lm(seed=4).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    stored = load_file(str(tmp_path / "model.safetensors"))
    assert all(a.dtype == ml_dtypes.bfloat16 for a in stored.values())
    params, cfg = load_pretrained(str(tmp_path))
    assert cfg.dtype == "float32"
    assert {v.dtype for v in _leaves(params).values()} == {np.dtype(np.float32)}
    # reference: transformers' float32 forward of the same (bf16-valued) checkpoint
    reference = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    ids = tokens()
    err = rel_err(sleepjax_logits(params, cfg, ids), reference_logits(reference, ids))
    print(f"\n[bf16 checkpoint -> float32] vs transformers: max rel err {err:.2e}")
    assert err < REL_TOL

    bf16_params, bf16_cfg = load_pretrained(str(tmp_path), dtype="bfloat16")
    assert bf16_cfg.dtype == "bfloat16"
    f32, bf16 = _leaves(params), _leaves(bf16_params)
    for path, leaf in bf16.items():
        assert leaf.dtype == ml_dtypes.bfloat16, path
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(f32[path]).astype(ml_dtypes.bfloat16))


def test_sharded_checkpoint(checkpoint, tmp_path):
    _, model = checkpoint(CASE)
    model.save_pretrained(tmp_path, max_shard_size="30KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    params, cfg = load_pretrained(str(tmp_path))
    ids = tokens()
    err = rel_err(sleepjax_logits(params, cfg, ids), reference_logits(model, ids))
    print(f"\n[sharded] vs transformers: max rel err {err:.2e}")
    assert err < REL_TOL


def _copy_with(src, dst, edit_tensors=None, edit_config=None):
    """A copy of checkpoint ``src`` in ``dst`` with its tensors / config edited in place."""
    os.makedirs(dst, exist_ok=True)
    tensors = load_file(os.path.join(src, "model.safetensors"))
    config = json.load(open(os.path.join(src, "config.json")))
    if edit_tensors:
        edit_tensors(tensors)
    if edit_config:
        edit_config(config)
    save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    json.dump(config, open(os.path.join(dst, "config.json"), "w"))
    return str(dst)


@pytest.mark.parametrize("edit, named", [
    (lambda t: t.pop("model.layers.1.self_attn.k_norm.weight"), "model.layers.1.self_attn.k_norm.weight"),
    (lambda t: t.update({"model.layers.0.linear_attn.A_log": np.zeros(3, np.float32)}),
     "model.layers.0.linear_attn.A_log"),
    (lambda t: t.update({"model.layers.0.linear_attn.extra.weight": np.zeros(2, np.float32)}),
     "model.layers.0.linear_attn.extra.weight"),
    (lambda t: t.update({"model.layers.9.mlp.up_proj.weight": np.zeros(2, np.float32)}),
     "model.layers.9.mlp.up_proj.weight"),
], ids=["missing", "mismatched", "unexpected", "extra-layer"])
def test_bad_tensors_are_named(edit, named, checkpoint, tmp_path):
    directory, _ = checkpoint(CASE)
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        load_pretrained(_copy_with(directory, tmp_path, edit_tensors=edit))


def test_vision_and_mtp_tensors_are_ignored(checkpoint, tmp_path):
    directory, _ = checkpoint(CASE)
    extra = {"mtp.fc.weight": np.ones((2, 2), np.float32),
             "model.visual.blocks.0.attn.qkv.weight": np.ones((3,), np.float32)}
    params, _ = load_pretrained(_copy_with(directory, tmp_path, lambda t: t.update(extra)))
    assert "head" in params


@pytest.mark.parametrize("edit, named", [
    (lambda c: c.update(architectures=["Qwen3NextForCausalLM"], model_type="qwen3_next"),
     "Qwen3NextForCausalLM"),
    (lambda c: c.update(model_type="gpt2", architectures=None), "gpt2"),
    (lambda c: c.update(attention_bias=True), "attention_bias"),
    (lambda c: c.update(hidden_act="gelu"), "hidden_act"),
    (lambda c: c["rope_parameters"].update(rope_type="yarn", factor=4.0), "rope_type"),
    (lambda c: c.update(num_experts=8, moe_intermediate_size=16), "num_experts"),
    (lambda c: c.update(layer_types=["linear_attention", "sliding_attention"] * 2), "layer_types"),
], ids=["architecture", "model_type", "bias", "activation", "rope", "moe", "layer-type"])
def test_unsupported_configs_are_refused_by_key(edit, named, checkpoint, tmp_path):
    directory, _ = checkpoint(CASE)
    with pytest.raises(ValueError, match=named):
        load_pretrained(_copy_with(directory, tmp_path, edit_config=edit))


def test_tied_checkpoint_with_a_different_head_is_refused(checkpoint, tmp_path):
    directory, _ = checkpoint(CASE)       # untied: has its own lm_head.weight
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        load_pretrained(_copy_with(directory, tmp_path,
                                   edit_config=lambda c: c.update(tie_word_embeddings=True)))


def test_missing_keys_take_transformers_defaults():
    """A config.json without optional keys means what transformers makes of it."""
    minimal = dict(model_type="qwen3_5_text", architectures=["Qwen3_5ForCausalLM"], vocab_size=97,
                   hidden_size=32, intermediate_size=40, num_hidden_layers=8,
                   num_attention_heads=4, num_key_value_heads=2)
    completed = Qwen3_5TextConfig(**{k: v for k, v in minimal.items()
                                     if k not in ("model_type", "architectures")}).to_dict()
    completed["architectures"] = minimal["architectures"]
    assert model_config_from_hf(minimal) == model_config_from_hf(completed)


def test_config_round_trips_through_transformers(checkpoint):
    directory, _ = checkpoint(CASE)
    params, cfg = load_pretrained(directory)
    kwargs = text_config_kwargs(grouped=True, tied=False, rotary=0.25)
    assert (cfg.attn_kv_heads, cfg.gdn_value_heads, cfg.gdn_value_head_dim, cfg.rope_fraction) == \
        (kwargs["num_key_value_heads"], kwargs["linear_num_value_heads"],
         kwargs["linear_value_head_dim"], 0.25)
    assert cfg.layer_pattern == "GAGG"


@pytest.mark.parametrize("head_dim, fraction, section, interleaved", [
    (256, 0.25, [11, 11, 10], True), (256, 0.25, [11, 11, 10], False), (16, 0.5, None, None),
])
def test_text_only_mrope_is_plain_rope(head_dim, fraction, section, interleaved):
    """transformers' multimodal RoPE with equal text positions == plain RoPE on the rotary dims."""
    rope = {"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": fraction}
    if section is not None:
        rope.update(mrope_section=section, mrope_interleaved=interleaved)
    config = Qwen3_5TextConfig(head_dim=head_dim, rope_parameters=rope)
    emb = Qwen3_5TextRotaryEmbedding(config)
    positions = torch.arange(50)[None]
    cos, sin = emb(torch.zeros(1, dtype=torch.float32), positions)
    rotary = int(head_dim * fraction)
    inv_freq = 1e6 ** (-np.arange(0, rotary, 2) / rotary)
    angles = np.arange(50)[:, None] * inv_freq[None]
    np.testing.assert_allclose(cos[0].numpy(), np.cos(np.concatenate([angles, angles], -1)), atol=1e-5)
    np.testing.assert_allclose(sin[0].numpy(), np.sin(np.concatenate([angles, angles], -1)), atol=1e-5)


def test_tokenizer_is_read_from_the_directory(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {"[UNK]": 0, "sleep": 1, "well": 2, "tonight": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.encode("sleep well tonight zzz").ids == [1, 2, 3, 0]
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(str(tmp_path / "elsewhere"))


@pytest.mark.parametrize("field, value", [
    ("zero_centered_norms", False), ("attn_output_gate", False), ("attn_qk_norm", False),
    ("position_encoding", "none"), ("gdn_norm_eps", 1e-5), ("layer_pattern", "GaGG"),
])
def test_export_refuses_what_qwen3_5_cannot_express(field, value, checkpoint):
    directory, _ = checkpoint(CASE)
    _, cfg = load_pretrained(directory)
    with pytest.raises(ValueError, match=field):
        hf_config_from_model(dataclasses.replace(cfg, **{field: value}), "float32")


def test_config_maps_back_to_itself(checkpoint):
    for case in ("grouped-untied-rotary0.25", "multimodal-grouped-tied-rotary0.5"):
        _, cfg = load_pretrained(checkpoint(case)[0])
        assert model_config_from_hf(hf_config_from_model(cfg, "float32")) == cfg
