"""Qwen3.5 checkpoint tensors <-> the sleepjax parameter tree (numpy arrays on both sides).

Conventions bridged here (the layout of the tree is documented in :mod:`sleepjax.models`):

* torch ``Linear.weight`` is ``[out, in]``; sleepjax kernels are ``[in, out]`` (transposed).
* attention ``q_proj`` packs, per head, ``[query (D) | output gate (D)]``; sleepjax keeps the
  query in ``wq`` and the gate in ``wg``, both head-major ``[d, H*D]``.
* the GDN ``in_proj_qkv`` and its depthwise ``conv1d.weight [C, 1, W]`` run over the
  concatenated channels ``q | k | v``; sleepjax has one kernel per stream, conv kernels
  ``[W, C]`` with ``[-1]`` the current token (torch's conv1d with ``W-1`` left padding has the
  same orientation, so only a transpose is needed).
* norm weights are copied as stored: Qwen's zero-centred norms (``x * (1 + w)``) are
  ``ModelConfig.zero_centered_norms``; the GDN output norm ``linear_attn.norm`` is plain.
"""

from __future__ import annotations

import numpy as np

from sleepjax.models import ModelConfig
from sleepjax.models.params import sizes

# Tensors of a conditional-generation checkpoint that are not part of the text model.
IGNORED_PREFIXES = ("model.visual.", "mtp.", "model.mtp.")
TEXT_PREFIXES = ("model.language_model.", "model.")   # ForConditionalGeneration, ForCausalLM


def ignored(name: str) -> bool:
    """Checkpoint tensors that are not part of the text model (skipped)."""
    return name.startswith(IGNORED_PREFIXES)


def text_prefix(names) -> str:
    """Where the text model's tensors live in a checkpoint (by its embedding's name)."""
    for prefix in TEXT_PREFIXES:
        if prefix + "embed_tokens.weight" in names:
            return prefix
    raise ValueError("checkpoint: no embedding tensor (looked for "
                     f"{[p + 'embed_tokens.weight' for p in TEXT_PREFIXES]})")


def expected_shapes(cfg: ModelConfig, prefix: str) -> dict[str, tuple[int, ...]]:
    """Every checkpoint tensor of the text model ``cfg`` -> its stored (torch) shape."""
    n = sizes(cfg)   # the layout's dim symbols (sleepjax.models.params.SIZES)
    d = n["d"]
    shapes = {f"{prefix}embed_tokens.weight": (n["vocab"], d), f"{prefix}norm.weight": (d,)}
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (n["vocab"], d)
    for i, kind in enumerate(cfg.layer_pattern):
        p = f"{prefix}layers.{i}."
        shapes.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                       p + "mlp.gate_proj.weight": (n["F"], d), p + "mlp.up_proj.weight": (n["F"], d),
                       p + "mlp.down_proj.weight": (d, n["F"])})
        if kind == "A":
            a = p + "self_attn."
            shapes.update({a + "q_proj.weight": (2 * n["Ha*Da"], d),        # query | gate
                           a + "k_proj.weight": (n["Hkv*Da"], d),
                           a + "v_proj.weight": (n["Hkv*Da"], d),
                           a + "o_proj.weight": (d, n["Ha*Da"]),
                           a + "q_norm.weight": (n["Da"],), a + "k_norm.weight": (n["Da"],)})
        else:
            g = p + "linear_attn."
            channels = 2 * n["Hg*K"] + n["Hv*V"]                             # q | k | v
            shapes.update({g + "in_proj_qkv.weight": (channels, d),
                           g + "in_proj_z.weight": (n["Hv*V"], d),
                           g + "in_proj_a.weight": (n["Hv"], d), g + "in_proj_b.weight": (n["Hv"], d),
                           g + "conv1d.weight": (channels, 1, n["conv_size"]),
                           g + "A_log": (n["Hv"],), g + "dt_bias": (n["Hv"],),
                           g + "norm.weight": (n["V"],), g + "out_proj.weight": (d, n["Hv*V"])})
    return shapes


def _qkv_split(cfg: ModelConfig) -> list[int]:
    key_channels = sizes(cfg)["Hg*K"]
    return [key_channels, 2 * key_channels]   # np.split points of q | k | v


def params_from_hf(t: dict[str, np.ndarray], cfg: ModelConfig, prefix: str) -> dict:
    """The nested parameter dict of ``cfg`` from checkpoint tensors ``t`` (already checked
    against :func:`expected_shapes`)."""
    n = sizes(cfg)
    params: dict = {"embed": {"embedding": t[f"{prefix}embed_tokens.weight"]}}
    for i, kind in enumerate(cfg.layer_pattern):
        p = f"{prefix}layers.{i}."
        block = {"mixer_norm": {"scale": t[p + "input_layernorm.weight"]},
                 "mlp_norm": {"scale": t[p + "post_attention_layernorm.weight"]},
                 "mlp": {"w_gate": t[p + "mlp.gate_proj.weight"].T, "w_up": t[p + "mlp.up_proj.weight"].T,
                         "w_down": t[p + "mlp.down_proj.weight"].T}}
        if kind == "A":
            a = p + "self_attn."
            q_and_gate = t[a + "q_proj.weight"].reshape(-1, 2, n["Da"], n["d"])   # per head
            block["attn"] = {
                "wq": q_and_gate[:, 0].reshape(-1, n["d"]).T, "wg": q_and_gate[:, 1].reshape(-1, n["d"]).T,
                "wk": t[a + "k_proj.weight"].T, "wv": t[a + "v_proj.weight"].T, "wo": t[a + "o_proj.weight"].T,
                "q_norm": {"scale": t[a + "q_norm.weight"]}, "k_norm": {"scale": t[a + "k_norm.weight"]}}
        else:
            g = p + "linear_attn."
            wq, wk, wv = np.split(t[g + "in_proj_qkv.weight"], _qkv_split(cfg), axis=0)
            cq, ck, cv = np.split(t[g + "conv1d.weight"][:, 0, :], _qkv_split(cfg), axis=0)
            block["gdn"] = {
                "wq": wq.T, "wk": wk.T, "wv": wv.T, "wg": t[g + "in_proj_z.weight"].T,
                "wa": t[g + "in_proj_a.weight"].T, "wb": t[g + "in_proj_b.weight"].T,
                "wo": t[g + "out_proj.weight"].T, "conv_q": cq.T, "conv_k": ck.T, "conv_v": cv.T,
                "A_log": t[g + "A_log"], "dt_bias": t[g + "dt_bias"],
                "out_norm": {"scale": t[g + "norm.weight"]}}
        params[f"blocks_{i}"] = block
    params["final_norm"] = {"scale": t[f"{prefix}norm.weight"]}
    if not cfg.tie_embeddings:
        params["head"] = {"kernel": t["lm_head.weight"].T}
    return params


def hf_from_params(params: dict, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The inverse of :func:`params_from_hf`: ``Qwen3_5ForCausalLM`` tensor names -> arrays."""
    n = sizes(cfg)
    t = {"model.embed_tokens.weight": params["embed"]["embedding"]}
    for i, kind in enumerate(cfg.layer_pattern):
        b, p = params[f"blocks_{i}"], f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": b["mixer_norm"]["scale"],
                  p + "post_attention_layernorm.weight": b["mlp_norm"]["scale"],
                  p + "mlp.gate_proj.weight": b["mlp"]["w_gate"].T, p + "mlp.up_proj.weight": b["mlp"]["w_up"].T,
                  p + "mlp.down_proj.weight": b["mlp"]["w_down"].T})
        if kind == "A":
            m, a = b["attn"], p + "self_attn."
            per_head = [m[w].T.reshape(-1, n["Da"], n["d"]) for w in ("wq", "wg")]
            t.update({a + "q_proj.weight": np.stack(per_head, axis=1).reshape(-1, n["d"]),
                      a + "k_proj.weight": m["wk"].T, a + "v_proj.weight": m["wv"].T,
                      a + "o_proj.weight": m["wo"].T,
                      a + "q_norm.weight": m["q_norm"]["scale"], a + "k_norm.weight": m["k_norm"]["scale"]})
        else:
            m, g = b["gdn"], p + "linear_attn."
            conv = np.concatenate([m["conv_q"].T, m["conv_k"].T, m["conv_v"].T], axis=0)
            t.update({g + "in_proj_qkv.weight": np.concatenate([m["wq"].T, m["wk"].T, m["wv"].T], axis=0),
                      g + "in_proj_z.weight": m["wg"].T, g + "in_proj_a.weight": m["wa"].T,
                      g + "in_proj_b.weight": m["wb"].T, g + "out_proj.weight": m["wo"].T,
                      g + "conv1d.weight": conv[:, None, :], g + "A_log": m["A_log"],
                      g + "dt_bias": m["dt_bias"], g + "norm.weight": m["out_norm"]["scale"]})
    t["model.norm.weight"] = params["final_norm"]["scale"]
    if not cfg.tie_embeddings:
        t["lm_head.weight"] = params["head"]["kernel"].T
    return t
