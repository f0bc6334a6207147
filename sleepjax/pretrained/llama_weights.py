"""Llama / Qwen3 checkpoint tensors <-> the sleepjax parameter tree (numpy arrays on both sides).

``LlamaForCausalLM`` / ``Qwen3ForCausalLM`` name their tensors alike (Qwen3 adds
``self_attn.q_norm`` / ``k_norm``, per-head ``[D]``, when ``ModelConfig.attn_qk_norm``):

* torch ``Linear.weight`` is ``[out, in]``; sleepjax kernels are ``[in, out]`` (transposed).
  ``q_proj`` / ``k_proj`` / ``v_proj`` rows are head-major like sleepjax's ``wq`` / ``wk`` /
  ``wv`` columns, and transformers' RoPE is rotate-half with frequencies
  ``theta^(-2i/D)`` like sleepjax's, so HF-format weights need no permutation (Meta's original
  ``consolidated.*.pth`` interleaved layout is not read here).
* norm weights are copied as stored (plain ``x * w`` norms: ``zero_centered_norms=False``).
"""

from __future__ import annotations

import numpy as np

from sleepjax.models import ModelConfig
from sleepjax.models.params import sizes

PREFIX = "model."
# non-persistent buffers some older checkpoints still store
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def ignored(name: str) -> bool:
    """Checkpoint tensors that are not parameters of the model (skipped)."""
    return name.endswith(IGNORED_SUFFIXES)


def text_prefix(names) -> str:
    if PREFIX + "embed_tokens.weight" not in names:
        raise ValueError(f"checkpoint: no embedding tensor (looked for {PREFIX}embed_tokens.weight)")
    return PREFIX


def _attn_names(cfg: ModelConfig) -> tuple[str, ...]:
    return ("q_proj", "k_proj", "v_proj", "o_proj") + (("q_norm", "k_norm") if cfg.attn_qk_norm else ())


def expected_shapes(cfg: ModelConfig, prefix: str = PREFIX) -> dict[str, tuple[int, ...]]:
    """Every checkpoint tensor of ``cfg`` -> its stored (torch) shape."""
    n = sizes(cfg)   # the layout's dim symbols (sleepjax.models.params.SIZES)
    d, F = n["d"], n["F"]
    shapes = {f"{prefix}embed_tokens.weight": (n["vocab"], d), f"{prefix}norm.weight": (d,)}
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (n["vocab"], d)
    attn = {"q_proj": (n["Ha*Da"], d), "k_proj": (n["Hkv*Da"], d), "v_proj": (n["Hkv*Da"], d),
            "o_proj": (d, n["Ha*Da"]), "q_norm": (n["Da"],), "k_norm": (n["Da"],)}
    for i, kind in enumerate(cfg.layer_pattern):
        if kind != "A":
            raise ValueError(f"model.layer_pattern={cfg.layer_pattern!r}: Llama-style checkpoints "
                             "have only attention blocks with an MLP ('A')")
        p = f"{prefix}layers.{i}."
        shapes.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                       p + "mlp.gate_proj.weight": (F, d), p + "mlp.up_proj.weight": (F, d),
                       p + "mlp.down_proj.weight": (d, F)})
        shapes.update({f"{p}self_attn.{n}.weight": attn[n] for n in _attn_names(cfg)})
    return shapes


def params_from_hf(t: dict[str, np.ndarray], cfg: ModelConfig, prefix: str = PREFIX) -> dict:
    """The nested parameter dict of ``cfg`` from checkpoint tensors ``t`` (already checked
    against :func:`expected_shapes`)."""
    params: dict = {"embed": {"embedding": t[f"{prefix}embed_tokens.weight"]}}
    for i in range(cfg.num_layers):
        p, a = f"{prefix}layers.{i}.", f"{prefix}layers.{i}.self_attn."
        attn = {"wq": t[a + "q_proj.weight"].T, "wk": t[a + "k_proj.weight"].T,
                "wv": t[a + "v_proj.weight"].T, "wo": t[a + "o_proj.weight"].T}
        if cfg.attn_qk_norm:
            attn.update(q_norm={"scale": t[a + "q_norm.weight"]}, k_norm={"scale": t[a + "k_norm.weight"]})
        params[f"blocks_{i}"] = {
            "mixer_norm": {"scale": t[p + "input_layernorm.weight"]}, "attn": attn,
            "mlp_norm": {"scale": t[p + "post_attention_layernorm.weight"]},
            "mlp": {"w_gate": t[p + "mlp.gate_proj.weight"].T, "w_up": t[p + "mlp.up_proj.weight"].T,
                    "w_down": t[p + "mlp.down_proj.weight"].T}}
    params["final_norm"] = {"scale": t[f"{prefix}norm.weight"]}
    if not cfg.tie_embeddings:
        params["head"] = {"kernel": t["lm_head.weight"].T}
    return params


def hf_from_params(params: dict, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The inverse of :func:`params_from_hf`: checkpoint tensor names -> arrays."""
    t = {f"{PREFIX}embed_tokens.weight": params["embed"]["embedding"]}
    for i in range(cfg.num_layers):
        b, p, a = params[f"blocks_{i}"], f"{PREFIX}layers.{i}.", f"{PREFIX}layers.{i}.self_attn."
        m = b["attn"]
        t.update({p + "input_layernorm.weight": b["mixer_norm"]["scale"],
                  p + "post_attention_layernorm.weight": b["mlp_norm"]["scale"],
                  p + "mlp.gate_proj.weight": b["mlp"]["w_gate"].T, p + "mlp.up_proj.weight": b["mlp"]["w_up"].T,
                  p + "mlp.down_proj.weight": b["mlp"]["w_down"].T,
                  a + "q_proj.weight": m["wq"].T, a + "k_proj.weight": m["wk"].T,
                  a + "v_proj.weight": m["wv"].T, a + "o_proj.weight": m["wo"].T})
        if cfg.attn_qk_norm:
            t.update({a + "q_norm.weight": m["q_norm"]["scale"], a + "k_norm.weight": m["k_norm"]["scale"]})
    t[f"{PREFIX}norm.weight"] = params["final_norm"]["scale"]
    if not cfg.tie_embeddings:
        t["lm_head.weight"] = params["head"]["kernel"].T
    return t
