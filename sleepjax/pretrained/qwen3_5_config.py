"""Qwen3.5 ``config.json`` <-> :class:`sleepjax.models.ModelConfig`.

Supported: the text model of Qwen3.5 (``Qwen3_5ForCausalLM``, model_type ``qwen3_5_text``) and
the text part of ``Qwen3_5ForConditionalGeneration`` (model_type ``qwen3_5``, the text model's
keys under ``text_config``). Anything sleepjax does not compute (biases, another activation,
scaled RoPE, mixture-of-experts, ...) is refused with an error naming the config key, so a
checkpoint is never run with silently different maths.

Keys missing from a ``config.json`` take transformers' ``Qwen3_5TextConfig`` defaults
(:data:`TEXT_DEFAULTS`; ``tests/pretrained`` checks them against transformers).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from sleepjax.models import ModelConfig
from sleepjax.pretrained.hf_config_common import refuse, rope_theta_and_fraction

# architecture -> model_type of its config.json
ARCHITECTURES = {"Qwen3_5ForCausalLM": "qwen3_5_text",
                 "Qwen3_5ForConditionalGeneration": "qwen3_5"}
LAYER_KINDS = {"full_attention": "A", "linear_attention": "G"}

TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 248320, "hidden_size": 4096, "intermediate_size": 12288,
    "num_hidden_layers": 32, "num_attention_heads": 16, "num_key_value_heads": 4,
    "head_dim": 256, "hidden_act": "silu", "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
    "attention_bias": False, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128,
    "linear_value_head_dim": 128, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
    "full_attention_interval": 4, "rope_theta": 10000.0, "partial_rotary_factor": 0.25,
}

# Mixture-of-experts keys (Qwen3.5-MoE and relatives): present and non-empty means the MLP is
# not the dense SwiGLU sleepjax has.
_MOE_KEYS = ("num_experts", "num_local_experts", "num_experts_per_tok", "moe_intermediate_size",
             "shared_expert_intermediate_size", "decoder_sparse_step", "mlp_only_layers")


_refuse = refuse   # the shared helper of sleepjax.pretrained.hf_config_common


def split_config(hf: Mapping[str, Any]) -> tuple[dict, bool]:
    """``(text config, tie_word_embeddings)`` of a Qwen3.5 ``config.json`` dict; raises for any
    other architecture."""
    model_type = hf.get("model_type")
    architectures = hf.get("architectures") or []
    unsupported = [a for a in architectures if a not in ARCHITECTURES]
    if unsupported:
        raise ValueError(f"config.json: architectures {unsupported} are not supported; "
                         f"sleepjax loads {sorted(ARCHITECTURES)}")
    if model_type not in ARCHITECTURES.values():
        raise ValueError(f"config.json: model_type {model_type!r} is not supported; sleepjax "
                         f"loads model_type {sorted(set(ARCHITECTURES.values()))}")
    for arch in architectures:
        if ARCHITECTURES[arch] != model_type:
            raise ValueError(f"config.json: architecture {arch} needs model_type "
                             f"{ARCHITECTURES[arch]!r}, got {model_type!r}")
    if model_type == "qwen3_5_text":
        text = dict(hf)
        return text, bool(text.get("tie_word_embeddings", TEXT_DEFAULTS["tie_word_embeddings"]))
    text = hf.get("text_config")
    if not isinstance(text, Mapping):
        raise ValueError("config.json: model_type 'qwen3_5' needs a 'text_config' object")
    # transformers ties the conditional-generation head by the top-level flag
    tie = hf.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
    return dict(text), bool(tie)


def _rope(text: Mapping[str, Any]) -> tuple[float, float]:
    """``(rope_theta, partial_rotary_factor)``; new-style ``rope_parameters`` or legacy keys.

    mrope_section / mrope_interleaved are accepted: for text all three position streams of
    Qwen's multimodal RoPE are equal, which is plain RoPE.
    """
    return rope_theta_and_fraction(text, TEXT_DEFAULTS["rope_theta"],
                                   TEXT_DEFAULTS["partial_rotary_factor"])


def _layer_pattern(text: Mapping[str, Any], num_layers: int) -> str:
    layer_types = text.get("layer_types")
    if layer_types is None:   # transformers' default: every interval-th layer is attention
        interval = text.get("full_attention_interval", TEXT_DEFAULTS["full_attention_interval"])
        layer_types = ["linear_attention" if (i + 1) % interval else "full_attention"
                       for i in range(num_layers)]
    unknown = sorted({t for t in layer_types if t not in LAYER_KINDS})
    if unknown:
        raise _refuse("layer_types", unknown, f"layer types are {sorted(LAYER_KINDS)}")
    if len(layer_types) != num_layers:
        raise ValueError(f"config.json: layer_types has {len(layer_types)} entries but "
                         f"num_hidden_layers is {num_layers}")
    return "".join(LAYER_KINDS[t] for t in layer_types)


def model_config_from_hf(hf: Mapping[str, Any], dtype: str = "float32") -> ModelConfig:
    """The :class:`ModelConfig` of a Qwen3.5 ``config.json`` dict (refusing what sleepjax lacks)."""
    text, tie = split_config(hf)
    get = lambda key: text.get(key, TEXT_DEFAULTS[key])   # noqa: E731
    if get("hidden_act") != "silu":
        raise _refuse("hidden_act", get("hidden_act"), "the MLP is SwiGLU with silu")
    if get("attention_bias"):
        raise _refuse("attention_bias", True, "projections have no bias")
    for key in _MOE_KEYS:
        if text.get(key):
            raise _refuse(key, text[key], "mixture-of-experts MLPs are not implemented")
    if text.get("use_sliding_window"):
        raise _refuse("use_sliding_window", True, "attention layers attend to the whole window")
    theta, fraction = _rope(text)
    kv_heads, key_heads = get("num_key_value_heads"), get("linear_num_key_heads")
    if get("num_attention_heads") % kv_heads:
        raise ValueError(f"config.json: num_attention_heads={get('num_attention_heads')} is not "
                         f"a multiple of num_key_value_heads={kv_heads}")
    if get("linear_num_value_heads") % key_heads:
        raise ValueError(f"config.json: linear_num_value_heads={get('linear_num_value_heads')} "
                         f"is not a multiple of linear_num_key_heads={key_heads}")
    eps = float(get("rms_norm_eps"))
    try:
        return ModelConfig(
            vocab_size=get("vocab_size"), d_model=get("hidden_size"),
            layer_pattern=_layer_pattern(text, get("num_hidden_layers")),
            attn_heads=get("num_attention_heads"), attn_kv_heads=kv_heads,
            attn_head_dim=get("head_dim"), attn_output_gate=True, attn_qk_norm=True,
            rope_theta=theta, rope_fraction=fraction, position_encoding="rope",
            gdn_heads=key_heads, gdn_head_dim=get("linear_key_head_dim"),
            gdn_value_heads=get("linear_num_value_heads"),
            gdn_value_head_dim=get("linear_value_head_dim"),
            conv_size=get("linear_conv_kernel_dim"), mlp_hidden=get("intermediate_size"),
            tie_embeddings=tie, norm_eps=eps, gdn_norm_eps=eps, zero_centered_norms=True,
            dtype=dtype)
    except ValueError as err:
        raise ValueError(f"config.json: the Qwen3.5 config maps to an invalid sleepjax "
                         f"ModelConfig: {err}") from err


def hf_config_from_model(cfg: ModelConfig, dtype: str) -> dict:
    """A ``Qwen3_5ForCausalLM`` ``config.json`` dict for ``cfg``; raises naming the
    ModelConfig field a Qwen3.5 checkpoint cannot express."""
    required = {"attn_output_gate": True, "attn_qk_norm": True, "zero_centered_norms": True,
                "position_encoding": "rope"}
    for field, value in required.items():
        if getattr(cfg, field) != value:
            raise ValueError(f"model.{field}={getattr(cfg, field)!r}: Qwen3.5 checkpoints need "
                             f"{value!r}")
    if set(cfg.layer_pattern) - set(LAYER_KINDS.values()):
        raise ValueError(f"model.layer_pattern={cfg.layer_pattern!r}: every Qwen3.5 layer has an "
                         "MLP, so only 'A' and 'G' blocks can be exported (no lowercase 'a' / 'g')")
    if not math.isclose(cfg.gdn_norm_eps, cfg.norm_eps, rel_tol=1e-12):
        raise ValueError(f"model.gdn_norm_eps={cfg.gdn_norm_eps!r}: Qwen3.5 has one rms_norm_eps "
                         f"for every norm (norm_eps={cfg.norm_eps!r})")
    kinds = {kind: name for name, kind in LAYER_KINDS.items()}
    return {
        "architectures": ["Qwen3_5ForCausalLM"], "model_type": "qwen3_5_text",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_hidden, "num_hidden_layers": cfg.num_layers,
        "layer_types": [kinds[k] for k in cfg.layer_pattern],
        "num_attention_heads": cfg.attn_heads,
        "num_key_value_heads": cfg.attn_kv_heads,
        "head_dim": cfg.attn_head_dim, "attention_bias": False, "hidden_act": "silu",
        # mrope_section is left to transformers' default: with text-only positions every
        # section gets the same angle, so any valid split is plain RoPE.
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rope_theta),
                            "partial_rotary_factor": float(cfg.rope_fraction)},
        "linear_num_key_heads": cfg.gdn_heads, "linear_key_head_dim": cfg.gdn_head_dim,
        "linear_num_value_heads": cfg.gdn_value_heads,
        "linear_value_head_dim": cfg.gdn_value_head_dim,
        "linear_conv_kernel_dim": cfg.conv_size, "rms_norm_eps": float(cfg.norm_eps),
        "tie_word_embeddings": bool(cfg.tie_embeddings), "dtype": dtype,
    }
