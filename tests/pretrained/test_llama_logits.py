"""Llama / Qwen3 (attention-only) checkpoints: loaded logits equal transformers', export round
trip, refusals by key, and the retrofit (GDN blocks inserted into a loaded Llama).

The reference is transformers' own forward of the model that wrote the checkpoint (float32, no
cache). Relative error = max |diff| / max |ref|; the measured values are printed (``pytest -s``).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)

from sleepjax.models import SleepConfig
from sleepjax.pretrained import hf_config_from_model, load_pretrained, model_config_from_hf, save_pretrained
from tiny_qwen import REL_TOL, VOCAB, checkpoint_builder, perturb, reference_logits, rel_err, sleepjax_logits, tokens

# One worker runs the module (the tiny Llama checkpoint is written once).
pytestmark = pytest.mark.xdist_group("test_llama_logits")

CLASSES = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM),
           "qwen2": (Qwen2Config, Qwen2ForCausalLM)}


def config_kwargs(tied=False, **overrides):
    """A tiny GQA config: d=32, 4 query / 2 key-value heads, 3 layers, MLP 40."""
    kwargs = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                  tie_word_embeddings=tied, initializer_range=0.1)
    kwargs.update(overrides)
    return kwargs


def tiny_model(model_type, seed=0, **kwargs):
    """A perturbed float32 transformers model (every norm weight moved away from 1)."""
    config_class, model_class = CLASSES[model_type]
    torch.manual_seed(seed)
    return perturb(model_class(config_class(**config_kwargs(**kwargs))).float().eval(), seed)


# case -> how its transformers model is built
CASES = {
    # head_dim left to transformers: hidden_size // heads = 8
    "llama-untied": lambda: tiny_model("llama", seed=0, tied=False),
    # head_dim set explicitly (not hidden // heads), another rope_theta
    "llama-tied-headdim16-theta5e5": lambda: tiny_model(
        "llama", seed=1, tied=True, head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
    "qwen3-untied-headdim16": lambda: tiny_model("qwen3", seed=2, tied=False, head_dim=16),
    "qwen3-tied-headdim8-theta1e6": lambda: tiny_model(
        "qwen3", seed=3, tied=True, head_dim=8,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
}


@pytest.fixture(scope="module")
def llama_checkpoint(tmp_path_factory):
    """``llama_checkpoint(case) -> (directory, transformers model)``, each saved once."""
    return checkpoint_builder(tmp_path_factory, CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_loaded_logits_match_transformers(case, llama_checkpoint):
    directory, model = llama_checkpoint(case)
    params, cfg = load_pretrained(directory)
    assert set(cfg.layer_pattern) == {"A"} and cfg.num_layers == 3
    assert (cfg.attn_heads, cfg.attn_kv_heads, cfg.attn_head_dim) == \
        (4, 2, model.config.head_dim)
    assert cfg.attn_qk_norm == case.startswith("qwen3")
    assert cfg.tie_embeddings == ("tied" in case.split("-")) and ("head" in params) != cfg.tie_embeddings
    assert cfg.rope_theta == model.config.rope_parameters["rope_theta"]
    ids = tokens()
    err = rel_err(sleepjax_logits(params, cfg, ids), reference_logits(model, ids))
    print(f"\n[{case}] load -> forward_sequence vs transformers: max rel err {err:.2e}")
    assert err < REL_TOL


@pytest.mark.parametrize("case, architecture", [
    ("llama-untied", "LlamaForCausalLM"), ("llama-tied-headdim16-theta5e5", "LlamaForCausalLM"),
    ("qwen3-untied-headdim16", "Qwen3ForCausalLM"),
])
def test_export_round_trip_in_transformers(case, architecture, llama_checkpoint, tmp_path):
    """load -> save_pretrained(architecture=...) -> transformers' from_pretrained: same logits."""
    directory, model = llama_checkpoint(case)
    params, cfg = load_pretrained(directory)
    save_pretrained(params, cfg, str(tmp_path), architecture=architecture, max_shard_bytes=20_000)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model_class = {"LlamaForCausalLM": LlamaForCausalLM, "Qwen3ForCausalLM": Qwen3ForCausalLM}
    exported = model_class[architecture].from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    ids = tokens(seed=1)
    err = rel_err(reference_logits(exported, ids), reference_logits(model, ids))
    print(f"\n[{case}] exported as {architecture}, in transformers vs original: max rel err {err:.2e}")
    assert err < 1e-6    # the same float32 weights, only rearranged
    # and the exported directory loads back to the same config
    assert load_pretrained(str(tmp_path))[1] == cfg


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_missing_keys_take_transformers_defaults(model_type):
    """A config.json without optional keys means what transformers makes of it."""
    minimal = dict(model_type=model_type, vocab_size=VOCAB, hidden_size=64, intermediate_size=40,
                   num_hidden_layers=2, num_attention_heads=4)
    if model_type == "qwen3":    # its default (32) would not divide 4 query heads
        minimal["num_key_value_heads"] = 2
    config_class = CLASSES[model_type][0]
    completed = config_class(**{k: v for k, v in minimal.items() if k != "model_type"}).to_dict()
    assert completed["model_type"] == model_type
    cfg = model_config_from_hf(minimal)
    assert cfg == model_config_from_hf(completed)
    # Llama: head_dim = hidden // heads, kv heads = heads; Qwen3: head_dim 128, 32 kv heads
    assert (cfg.attn_head_dim, cfg.attn_kv_heads) == ((16, 4) if model_type == "llama" else (128, 2))
    assert cfg.rope_theta == 10000.0 and cfg.norm_eps == 1e-6 and not cfg.tie_embeddings


def test_legacy_top_level_rope_theta(llama_checkpoint, tmp_path):
    """Older config.json files: ``rope_theta`` at the top level and ``rope_scaling: null``."""
    directory, _ = llama_checkpoint("llama-tied-headdim16-theta5e5")
    config = json.load(open(f"{directory}/config.json"))
    theta = config.pop("rope_parameters")["rope_theta"]
    legacy = dict(config, rope_theta=theta, rope_scaling=None)
    assert model_config_from_hf(legacy) == model_config_from_hf(config | {"rope_parameters": {
        "rope_type": "default", "rope_theta": theta}})
    assert model_config_from_hf(legacy).rope_theta == 500000.0


@pytest.mark.parametrize("model_type, edit, named", [
    ("llama", dict(attention_bias=True), "attention_bias"),
    ("llama", dict(mlp_bias=True), "mlp_bias"),
    ("qwen3", dict(attention_bias=True), "attention_bias"),
    ("llama", dict(hidden_act="gelu"), "hidden_act"),
    ("llama", dict(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 8192}), "rope_type"),
    ("llama", dict(rope_scaling={"type": "linear", "factor": 2.0}), "rope_type"),
    ("llama", dict(partial_rotary_factor=0.5), "partial_rotary_factor"),
    ("qwen3", dict(use_sliding_window=True), "use_sliding_window"),
    ("qwen3", dict(layer_types=["full_attention", "sliding_attention", "full_attention"]),
     "layer_types"),
    ("llama", dict(architectures=["Qwen3ForCausalLM"]), "Qwen3ForCausalLM"),
    ("qwen2", {}, "model_type='qwen2'"),
], ids=["llama-attention_bias", "llama-mlp_bias", "qwen3-attention_bias", "activation",
        "rope-llama3", "rope-legacy-scaling", "partial-rotary", "sliding-window", "layer-types",
        "architecture-mismatch", "qwen2"])
def test_unsupported_configs_are_refused_by_key(model_type, edit, named):
    config = CLASSES[model_type][0](**config_kwargs()).to_dict()
    config["architectures"] = [CLASSES[model_type][1].__name__]
    config.update(edit)
    with pytest.raises(ValueError, match=named) as err:
        model_config_from_hf(config)
    print(f"\n[{named}] {err.value}")


def test_qwen2_checkpoint_is_refused(tmp_path):
    """Qwen2 (q/k/v biases) is refused before any tensor is read, naming its model_type."""
    tiny_model("qwen2").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model_type='qwen2'.*biases"):
        load_pretrained(str(tmp_path))


def test_bias_checkpoint_is_refused(tmp_path):
    tiny_model("llama", attention_bias=True).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="attention_bias=True"):
        load_pretrained(str(tmp_path))


def test_llama_export_refuses_what_llama_cannot_express(llama_checkpoint):
    _, cfg = load_pretrained(llama_checkpoint("llama-untied")[0])
    for field, value in [("attn_qk_norm", True), ("attn_output_gate", True),
                         ("zero_centered_norms", True), ("layer_pattern", "AGA"),
                         ("layer_pattern", "AaA"), ("rope_fraction", 0.5)]:
        with pytest.raises(ValueError, match=f"model.{field}"):
            hf_config_from_model(dataclasses.replace(cfg, **{field: value}), "float32",
                                 architecture="LlamaForCausalLM")
    with pytest.raises(ValueError, match="model.attn_qk_norm"):   # Qwen3 needs the q/k norm
        hf_config_from_model(cfg, "float32", architecture="Qwen3ForCausalLM")
    with pytest.raises(ValueError, match="model.attn_output_gate"):   # the default stays Qwen3.5
        hf_config_from_model(cfg, "float32")
    with pytest.raises(ValueError, match="architecture"):
        hf_config_from_model(cfg, "float32", architecture="GPT2LMHeadModel")


def test_retrofit_gdn_blocks_inserted_into_a_loaded_llama(llama_checkpoint):
    """The paper's second retrofit route: GDN blocks (without MLP) inserted into a loaded
    Llama. With zero-initialised outputs the new blocks are the identity (transformers' logits
    still); the result is a valid sleeping model that runs with sleep passes."""
    surgery = pytest.importorskip("sleepjax.models.surgery")
    import jax

    from sleepjax.models import forward_sequence
    from sleepjax.models.validation import check_configs

    directory, model = llama_checkpoint("llama-untied")
    params, cfg = load_pretrained(directory)
    sleep = SleepConfig(window=16, passes=2)
    with pytest.raises(ValueError, match="layer_pattern"):
        check_configs(cfg, sleep)
    cfg = cfg.replace(gdn_heads=2, gdn_head_dim=8, gdn_chunk_size=8)
    params, cfg = surgery.insert_blocks(params, cfg, positions=(1, 3), kind="g",
                                        rng=jax.random.PRNGKey(0), zero_output=True)
    assert cfg.layer_pattern == "AgAgA"
    check_configs(cfg, sleep)
    ids = tokens()
    err = rel_err(sleepjax_logits(params, cfg, ids), reference_logits(model, ids))
    print(f"\n[retrofit AgAgA, zero outputs] forward_sequence vs the Llama in transformers: "
          f"max rel err {err:.2e}")
    assert err < REL_TOL
    logits = jax.jit(forward_sequence, static_argnums=(2, 3))(params, ids, cfg, sleep)
    assert logits.shape == (*ids.shape, cfg.vocab_size) and np.isfinite(np.asarray(logits)).all()
