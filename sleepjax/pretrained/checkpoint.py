"""``load_pretrained`` / ``save_pretrained``: a local Hugging Face checkpoint directory <-> sleepjax.

Families (:data:`FAMILIES`, one entry each: the config.json mapping and the tensor mapping):
Qwen3.5 (GDN / attention hybrid), Llama and Qwen3 (attention-only). ``load_pretrained``
dispatches on config.json's ``model_type`` (and checks ``architectures`` against it);
``save_pretrained`` writes Qwen3.5 unless told another ``architecture``.

Loading is all-or-nothing: the checkpoint's tensors are first checked by name, shape and
stored dtype against what the config implies (every missing, mis-shaped or unexpected tensor is
named in the error; fp8 and integer / quantised tensors are refused by name), then converted and
checked to be finite (a NaN / Inf weight is named: a fine-tune from it would fail at its first
step for a reason that looks like a learning-rate problem), then the resulting tree is checked
against ``jax.eval_shape(init_params)`` for the same config. Every file-level failure
(config.json, the index, a safetensors file) is one ValueError naming the file. Nothing here
downloads anything.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from types import ModuleType
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from sleepjax.models import ModelConfig, init_params
from sleepjax.models.validation import tree_differences
from sleepjax.pretrained import llama_config, llama_weights, qwen3_5_config, qwen3_5_weights
from sleepjax.pretrained.safetensors_io import CheckpointReader, read_json_file, write_checkpoint


_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Family:
    """One checkpoint family: which config.json it reads and how.

    ``config_from_hf(hf dict, dtype) -> ModelConfig`` and ``config_to_hf(cfg, dtype) -> dict``
    map the config (raising, naming the key / field, for what sleepjax or the family cannot
    express); ``weights`` is a module with ``ignored(name)``, ``text_prefix(names)``,
    ``expected_shapes(cfg, prefix)``, ``params_from_hf(tensors, cfg, prefix)`` and
    ``hf_from_params(params, cfg)``. ``architectures[0]`` is what export writes.
    """

    name: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    config_from_hf: Callable[[Mapping[str, Any], str], ModelConfig]
    config_to_hf: Callable[[ModelConfig, str], dict]
    weights: ModuleType


FAMILIES: tuple[Family, ...] = (
    Family("Qwen3.5", ("qwen3_5_text", "qwen3_5"),
           ("Qwen3_5ForCausalLM", "Qwen3_5ForConditionalGeneration"),
           qwen3_5_config.model_config_from_hf, qwen3_5_config.hf_config_from_model, qwen3_5_weights),
    Family("Llama", ("llama",), ("LlamaForCausalLM",), llama_config.model_config_from_hf,
           functools.partial(llama_config.hf_config_from_model, model_type="llama"), llama_weights),
    Family("Qwen3", ("qwen3",), ("Qwen3ForCausalLM",), llama_config.model_config_from_hf,
           functools.partial(llama_config.hf_config_from_model, model_type="qwen3"), llama_weights),
)

# Near relatives that sleepjax cannot run exactly: model_type -> why (named in the error).
REFUSED_MODEL_TYPES = {
    "qwen2": "Qwen2's q_proj / k_proj / v_proj have biases, which sleepjax's attention does not have",
}


def family_of(hf: Mapping[str, Any]) -> Family:
    """The :class:`Family` of a ``config.json`` dict (by ``model_type``, consistent with
    ``architectures``); raises naming the model_type / architecture otherwise."""
    model_type = hf.get("model_type")
    architectures = list(hf.get("architectures") or [])
    if model_type in REFUSED_MODEL_TYPES:
        raise ValueError(f"config.json: model_type={model_type!r} is not supported by sleepjax "
                         f"({REFUSED_MODEL_TYPES[model_type]})")
    by_type = {t: f for f in FAMILIES for t in f.model_types}
    if model_type not in by_type:
        known = [a for f in FAMILIES for a in f.architectures]
        raise ValueError(f"config.json: model_type {model_type!r} (architectures {architectures}) is "
                         f"not supported; sleepjax loads model_type {sorted(by_type)} "
                         f"(architectures {known})")
    family = by_type[model_type]
    unsupported = [a for a in architectures if a not in family.architectures]
    if unsupported:
        raise ValueError(f"config.json: architectures {unsupported} do not go with model_type "
                         f"{model_type!r}; sleepjax reads it as {list(family.architectures)}")
    return family


def family_for_export(architecture: str) -> Family:
    for family in FAMILIES:
        if architecture == family.architectures[0]:
            return family
    raise ValueError(f"architecture: save_pretrained writes "
                     f"{[f.architectures[0] for f in FAMILIES]}, got {architecture!r}")


def model_config_from_hf(hf: Mapping[str, Any], dtype: str = "float32") -> ModelConfig:
    """The :class:`ModelConfig` of any supported ``config.json`` dict (dispatching on its family)."""
    return family_of(hf).config_from_hf(hf, dtype)


def hf_config_from_model(cfg: ModelConfig, dtype: str,
                         architecture: str = "Qwen3_5ForCausalLM") -> dict:
    """The ``config.json`` dict of ``cfg`` as an ``architecture`` checkpoint (Qwen3.5 by default)."""
    return family_for_export(architecture).config_to_hf(cfg, dtype)


_PARAM_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
_SHOWN = 8   # names listed in an error before "... and N more"


def _param_dtype(dtype) -> str:
    try:    # numpy does not know the string "bfloat16" (ml_dtypes' type it does)
        name = "float32" if dtype is None else dtype if isinstance(dtype, str) else np.dtype(dtype).name
    except TypeError:
        name = repr(dtype)
    if name not in _PARAM_DTYPES:
        raise ValueError(f"dtype: must be None, float32 or bfloat16, got {dtype!r}")
    return name


def _listing(names) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def read_config(path: str) -> dict:
    """The ``config.json`` object of a checkpoint directory; ValueError naming the file if it is
    not UTF-8 JSON holding an object."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{path}: no config.json (expected a local Hugging Face "
                                "checkpoint directory)")
    return read_json_file(config_path)


def config_of(path: str, dtype: str = "float32") -> tuple[dict, Family, ModelConfig]:
    """``(config.json dict, family, ModelConfig)`` of a checkpoint directory; every way the
    config cannot be read or mapped is a ValueError naming the config.json file."""
    hf = read_config(path)
    config_path = os.path.join(path, "config.json")
    try:
        family = family_of(hf)
        return hf, family, family.config_from_hf(hf, dtype)
    except ValueError as error:
        message = str(error).removeprefix("config.json: ")
        raise ValueError(f"{config_path}: {message}") from None
    except (TypeError, KeyError, AttributeError) as error:   # e.g. a null where a number goes
        nulls = sorted(k for k, v in hf.items() if v is None)
        raise ValueError(f"{config_path}: cannot be read as a checkpoint config "
                         f"({type(error).__name__}: {error})"
                         + (f"; keys set to null: {nulls}" if nulls else "")) from None


def _check_finite(tensors: Mapping[str, np.ndarray], path: str) -> None:
    """Refuse a NaN / Inf weight, naming the tensor and how many of its values are bad."""
    for name, array in tensors.items():
        finite = np.isfinite(array)
        if not finite.all():
            raise ValueError(f"{path}: tensor {name!r} has {int(finite.size - finite.sum())} "
                             f"non-finite value(s) (NaN / Inf) of {finite.size}; a model "
                             "cannot be trained or run from it (allow_non_finite=True loads it "
                             "anyway)")


def _check_tensors(reader: CheckpointReader, expected: dict, tied_head: bool,
                   family: Family) -> None:
    """Raise naming every missing / mis-shaped / unexpected tensor (headers only)."""
    present = set(reader.names())
    ignored = {n for n in present if family.weights.ignored(n)}
    if tied_head:   # a tied head may be stored as a copy; checked for equality when loading
        ignored.add("lm_head.weight")
    problems = []
    missing = set(expected) - present
    if missing:
        problems.append(f"missing tensors: {_listing(missing)}")
    mismatched = [f"{n} {reader.shape(n)} (expected {expected[n]})"
                  for n in sorted(set(expected) & present) if reader.shape(n) != expected[n]]
    if mismatched:
        problems.append(f"tensors with a different shape: {_listing(mismatched)}")
    unexpected = present - set(expected) - ignored
    if unexpected:
        problems.append(f"unexpected tensors (not part of this config's model): {_listing(unexpected)}")
    if problems:
        raise ValueError(f"{reader.path}: the checkpoint does not match its config.json (read as a "
                         f"{family.name} checkpoint); " + "; ".join(problems))


def _check_tree(params: dict, cfg: ModelConfig) -> None:
    """The converted tree must be exactly ``init_params``' tree (guards the name mapping)."""
    reference = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
    problems = tree_differences(params, reference, dtypes=False)   # any dtype may be loaded
    if problems:
        raise ValueError(f"pretrained: the converted parameters differ from init_params' tree: "
                         f"{_listing(problems)}")


def load_pretrained(path: str, dtype=None, *, allow_non_finite: bool = False
                    ) -> tuple[dict, ModelConfig]:
    """Load a local checkpoint directory: ``(params, model_cfg)``.

    Args:
      path: a directory with ``config.json`` and ``model.safetensors`` (or shards listed in
        ``model.safetensors.index.json``) of a ``Qwen3_5ForCausalLM`` or
        ``Qwen3_5ForConditionalGeneration`` (text model only; vision and MTP weights are skipped),
        a ``LlamaForCausalLM`` or a ``Qwen3ForCausalLM`` (attention-only: ``layer_pattern`` all
        ``A``; insert GDN blocks before running it as a sleeping model).
      dtype: parameter dtype, None (float32) or bfloat16, whatever the stored dtype;
        ``model_cfg.dtype`` (the compute dtype) is set to it too.
      allow_non_finite: load weights holding NaN / Inf (after conversion to ``dtype``) with a
        logged warning instead of refusing them.

    Raises:
      FileNotFoundError: no config.json / safetensors file in ``path``.
      ValueError: one line naming the file (and tensor) for everything else: a config.json or
        index that is not UTF-8 JSON holding an object, a config sleepjax cannot express, a
        truncated or corrupt safetensors file, a missing / mis-shaped / unexpected tensor, an
        fp8 or integer tensor, a non-finite weight.

    Returns the parameter tree of :func:`sleepjax.models.init_params` and its config; run it
    with :func:`sleepjax.models.forward_sequence` or :mod:`sleepjax.inference`.
    """
    param_dtype = _param_dtype(dtype)
    _, family, cfg = config_of(path, param_dtype)
    weights = family.weights
    reader = CheckpointReader(path)
    prefix = weights.text_prefix(set(reader.names()))
    expected = weights.expected_shapes(cfg, prefix)
    tied_copy = cfg.tie_embeddings and "lm_head.weight" in reader
    _check_tensors(reader, expected, cfg.tie_embeddings, family)
    target = _PARAM_DTYPES[param_dtype]
    for name in expected:    # from the headers, before any tensor data is read
        reader.check_dtype(name)
    tensors = {name: reader.get(name).astype(target, copy=False) for name in expected}
    if allow_non_finite:
        try:
            _check_finite(tensors, path)
        except ValueError as error:
            _log.warning("loading non-finite weights (allow_non_finite=True): %s", error)
    else:
        _check_finite(tensors, path)
    if tied_copy and not np.array_equal(reader.get("lm_head.weight").astype(target),
                                        tensors[prefix + "embed_tokens.weight"]):
        raise ValueError(f"{path}: tie_word_embeddings is true but lm_head.weight differs from "
                         f"{prefix}embed_tokens.weight")
    params = weights.params_from_hf(tensors, cfg, prefix)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(np.ascontiguousarray(a)), params)
    _check_tree(params, cfg)
    return params, cfg


def save_pretrained(params: dict, model_cfg: ModelConfig, path: str, dtype=None,
                    max_shard_bytes: int | None = None,
                    architecture: str = "Qwen3_5ForCausalLM") -> None:
    """Write ``params`` as a checkpoint transformers can load.

    ``architecture``: ``Qwen3_5ForCausalLM`` (default), ``LlamaForCausalLM`` or
    ``Qwen3ForCausalLM`` (the last two attention-only); a ModelConfig field the architecture
    cannot express is named in the error. Writes ``config.json`` and safetensors in ``dtype``
    (None: the dtype of the embedding); above ``max_shard_bytes`` the weights are split into
    shards with an index file. The tokenizer is not written (copy ``tokenizer*.json`` alongside
    if needed).
    """
    family = family_for_export(architecture)
    _check_tree(params, model_cfg)
    name = _param_dtype(np.asarray(params["embed"]["embedding"]).dtype if dtype is None else dtype)
    config = family.config_to_hf(model_cfg, name)
    target = _PARAM_DTYPES[name]
    host = jax.tree_util.tree_map(lambda a: np.asarray(a).astype(target), params)
    tensors = family.weights.hf_from_params(host, model_cfg)
    os.makedirs(path, exist_ok=True)
    write_checkpoint(tensors, path, max_shard_bytes)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
