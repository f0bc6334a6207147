"""Pretrained checkpoints: load and export Qwen3.5 (Gated DeltaNet / attention hybrid) models.

* :func:`load_pretrained` ``(path, dtype=None) -> (params, model_cfg)`` reads a local Hugging
  Face directory (``config.json`` + ``*.safetensors``, sharded or not, bf16 or f32) of a
  ``Qwen3_5ForCausalLM`` or the text part of a ``Qwen3_5ForConditionalGeneration``.
* :func:`save_pretrained` ``(params, model_cfg, path)`` writes a ``Qwen3_5ForCausalLM``
  directory that ``transformers`` loads.
* :func:`load_tokenizer` ``(path) -> tokenizers.Tokenizer``.

Nothing here downloads: point it at a directory fetched beforehand (README, "Pretrained
checkpoints"). The config mapping is in :mod:`sleepjax.pretrained.qwen3_5_config`, the tensor
mapping in :mod:`sleepjax.pretrained.qwen3_5_weights`.
"""

from sleepjax.pretrained.checkpoint import load_pretrained, save_pretrained
from sleepjax.pretrained.qwen3_5_config import hf_config_from_model, model_config_from_hf
from sleepjax.pretrained.tokenizer import load_tokenizer

__all__ = ["load_pretrained", "save_pretrained", "load_tokenizer", "model_config_from_hf",
           "hf_config_from_model"]
