"""Llama / Qwen3 ``config.json`` <-> :class:`sleepjax.models.ModelConfig` (attention-only models).

Supported: ``LlamaForCausalLM`` (model_type ``llama``) and ``Qwen3ForCausalLM`` (model_type
``qwen3``, which is Llama plus a per-head RMSNorm of q and k before RoPE and a ``head_dim`` of
its own). Both are pre-norm SwiGLU transformers with grouped-query attention, plain (``x * w``)
RMSNorms and rotate-half RoPE over the whole head (transformers' convention is sleepjax's, so
HF-format q/k weights need no permutation). The loaded model is attention-only
(``layer_pattern = "A" * num_hidden_layers``): a valid architecture to load, run and insert
Gated DeltaNet blocks into; the sleeping model needs at least one ``G`` block
(:func:`sleepjax.models.validation.check_configs`). The GDN fields keep their defaults.

Refused, naming the key: projection biases (``attention_bias`` / ``mlp_bias``; Qwen2, whose
q/k/v projections always have biases, is refused by its model_type in
:mod:`sleepjax.pretrained.checkpoint`), another activation, scaled RoPE (``rope_type`` other
than ``default``, e.g. Llama 3.1's ``llama3``), partial rotary, sliding-window layers.

Keys missing from a ``config.json`` take transformers' ``LlamaConfig`` / ``Qwen3Config``
defaults (:data:`DEFAULTS`; ``tests/pretrained/test_llama_logits.py`` checks them).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from sleepjax.models import ModelConfig
from sleepjax.pretrained.hf_config_common import refuse, rope_theta_and_fraction

# model_type -> its architecture name (what export writes)
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
QK_NORM = {"llama": False, "qwen3": True}

_COMMON = {"hidden_act": "silu", "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
           "attention_bias": False, "rope_theta": 10000.0}
# transformers' defaults; head_dim None = hidden_size // num_attention_heads and
# num_key_value_heads None = num_attention_heads, as transformers resolves them.
DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {**_COMMON, "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": None,
              "head_dim": None, "mlp_bias": False},
    "qwen3": {**_COMMON, "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
              "head_dim": 128, "use_sliding_window": False},
}


def _model_type(hf: Mapping[str, Any]) -> str:
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ValueError(f"config.json: model_type {model_type!r} is not a Llama-style model "
                         f"(this mapping reads {sorted(ARCHITECTURES)})")
    return model_type


def model_config_from_hf(hf: Mapping[str, Any], dtype: str = "float32") -> ModelConfig:
    """The :class:`ModelConfig` of a Llama / Qwen3 ``config.json`` dict (refusing what sleepjax
    lacks)."""
    model_type = _model_type(hf)
    defaults = DEFAULTS[model_type]
    get = lambda key: hf.get(key, defaults[key])   # noqa: E731
    if get("hidden_act") != "silu":
        raise refuse("hidden_act", get("hidden_act"), "the MLP is SwiGLU with silu")
    if get("attention_bias"):
        raise refuse("attention_bias", get("attention_bias"), "attention projections have no bias")
    if hf.get("mlp_bias"):
        raise refuse("mlp_bias", hf["mlp_bias"], "MLP projections have no bias")
    if hf.get("use_sliding_window"):
        raise refuse("use_sliding_window", hf["use_sliding_window"],
                     "attention layers attend to the whole window")
    num_layers = get("num_hidden_layers")
    layer_types = hf.get("layer_types")
    if layer_types is not None:
        if any(t != "full_attention" for t in layer_types):
            raise refuse("layer_types", sorted(set(layer_types)),
                         f"every {ARCHITECTURES[model_type]} layer must be 'full_attention'")
        if len(layer_types) != num_layers:
            raise ValueError(f"config.json: layer_types has {len(layer_types)} entries but "
                             f"num_hidden_layers is {num_layers}")
    theta, fraction = rope_theta_and_fraction(hf, defaults["rope_theta"], 1.0)
    if fraction != 1.0:   # transformers' Llama / Qwen3 rotary embedding ignores the key
        raise refuse("partial_rotary_factor", fraction,
                     f"{ARCHITECTURES[model_type]} rotates the whole head")
    heads, d = get("num_attention_heads"), get("hidden_size")
    kv_heads = get("num_key_value_heads") or heads
    head_dim = get("head_dim") or d // heads
    if heads % kv_heads:
        raise ValueError(f"config.json: num_attention_heads={heads} is not a multiple of "
                         f"num_key_value_heads={kv_heads}")
    try:
        return ModelConfig(
            vocab_size=get("vocab_size"), d_model=d, layer_pattern="A" * num_layers,
            attn_heads=heads, attn_kv_heads=kv_heads, attn_head_dim=head_dim,
            attn_output_gate=False, attn_qk_norm=QK_NORM[model_type],
            rope_theta=theta, rope_fraction=1.0, position_encoding="rope",
            mlp_hidden=get("intermediate_size"),
            tie_embeddings=bool(get("tie_word_embeddings")), norm_eps=float(get("rms_norm_eps")),
            zero_centered_norms=False, dtype=dtype)
    except ValueError as err:
        raise ValueError(f"config.json: the {ARCHITECTURES[model_type]} config maps to an invalid "
                         f"sleepjax ModelConfig: {err}") from err


def hf_config_from_model(cfg: ModelConfig, dtype: str, model_type: str = "llama") -> dict:
    """A ``LlamaForCausalLM`` (``model_type="llama"``) or ``Qwen3ForCausalLM`` (``"qwen3"``)
    ``config.json`` dict for ``cfg``; raises naming the ModelConfig field the checkpoint cannot
    express (GDN blocks, an output gate, zero-centred norms, ...)."""
    if model_type not in ARCHITECTURES:
        raise ValueError(f"model_type: must be one of {sorted(ARCHITECTURES)}, got {model_type!r}")
    architecture = ARCHITECTURES[model_type]
    required = {"attn_output_gate": False, "attn_qk_norm": QK_NORM[model_type],
                "zero_centered_norms": False, "position_encoding": "rope"}
    for field, value in required.items():
        if getattr(cfg, field) != value:
            raise ValueError(f"model.{field}={getattr(cfg, field)!r}: {architecture} checkpoints "
                             f"need {value!r}")
    if set(cfg.layer_pattern) != {"A"}:
        raise ValueError(f"model.layer_pattern={cfg.layer_pattern!r}: {architecture} is "
                         "attention-only with an MLP in every layer, so only 'A' blocks can be "
                         "exported")
    if not math.isclose(cfg.rope_fraction, 1.0):
        raise ValueError(f"model.rope_fraction={cfg.rope_fraction!r}: {architecture} rotates the "
                         "whole head (1.0)")
    config = {
        "architectures": [architecture], "model_type": model_type,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_hidden, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.attn_heads, "num_key_value_heads": cfg.attn_kv_heads,
        "head_dim": cfg.attn_head_dim, "hidden_act": "silu", "attention_bias": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        "rms_norm_eps": float(cfg.norm_eps), "tie_word_embeddings": bool(cfg.tie_embeddings),
        "dtype": dtype,
    }
    if model_type == "llama":
        config["mlp_bias"] = False
    else:
        config.update(use_sliding_window=False,
                      layer_types=["full_attention"] * cfg.num_layers)
    return config
