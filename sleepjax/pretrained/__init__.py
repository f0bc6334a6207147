"""Pretrained checkpoints: load and export Qwen3.5 (Gated DeltaNet / attention hybrid) models and
attention-only Llama / Qwen3 models (to insert GDN blocks into, the paper's second retrofit).

* :func:`load_pretrained` ``(path, dtype=None) -> (params, model_cfg)`` reads a local Hugging
  Face directory (``config.json`` + ``*.safetensors``, sharded or not, bf16 or f32) of a
  ``Qwen3_5ForCausalLM``, the text part of a ``Qwen3_5ForConditionalGeneration``, a
  ``LlamaForCausalLM`` or a ``Qwen3ForCausalLM`` (dispatching on config.json's ``model_type``).
* :func:`save_pretrained` ``(params, model_cfg, path, architecture="Qwen3_5ForCausalLM")``
  writes a directory that ``transformers`` loads (``LlamaForCausalLM`` / ``Qwen3ForCausalLM``
  for attention-only configs).
* :func:`load_tokenizer` ``(path) -> tokenizers.Tokenizer``.

Nothing here downloads: point it at a directory fetched beforehand (README, "Pretrained
checkpoints"). Each family is one entry of :data:`sleepjax.pretrained.checkpoint.FAMILIES`: a
config mapping (:mod:`~sleepjax.pretrained.qwen3_5_config`, :mod:`~sleepjax.pretrained.llama_config`)
and a tensor mapping (:mod:`~sleepjax.pretrained.qwen3_5_weights`,
:mod:`~sleepjax.pretrained.llama_weights`).
"""

from sleepjax.pretrained.checkpoint import (FAMILIES, hf_config_from_model, load_pretrained,
                                            model_config_from_hf, save_pretrained)
from sleepjax.pretrained.tokenizer import load_tokenizer

__all__ = ["load_pretrained", "save_pretrained", "load_tokenizer", "model_config_from_hf",
           "hf_config_from_model", "FAMILIES"]
