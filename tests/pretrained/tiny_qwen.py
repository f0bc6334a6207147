"""Tiny random Qwen3.5 models built with transformers (the reference) for the pretrained tests.

Every norm weight, ``A_log`` and ``dt_bias`` is perturbed away from its initial value, so a
loader that dropped one of them (or mixed up a zero-centred and a plain norm) changes the
logits. Sizes are chosen so no two dims coincide by accident: d=32, attention head_dim 16,
GDN key dim 8, value dim 12.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import torch
from transformers import (Qwen3_5Config, Qwen3_5ForCausalLM, Qwen3_5ForConditionalGeneration,
                          Qwen3_5TextConfig)

from sleepjax.models import SleepConfig, forward_sequence

VOCAB = 97
BATCH = 2
SEQ = 37            # not a multiple of any GDN chunk size used (16 here, 64 in transformers)
REL_TOL = 1e-4      # float32, max |diff| / max |ref|

SLEEP = SleepConfig(window=SEQ + 3, passes=1)      # one window: the plain hybrid over T tokens

LAYER_TYPES = ["linear_attention", "full_attention", "linear_attention", "linear_attention"]


def text_config_kwargs(grouped=True, tied=False, rotary=0.25, **overrides):
    """Keyword arguments of a tiny ``Qwen3_5TextConfig``.

    ``grouped``: 4 GDN value heads served by 2 key heads (else 2 and 2).
    """
    kwargs = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=40,
                  num_hidden_layers=len(LAYER_TYPES), layer_types=list(LAYER_TYPES),
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  linear_num_key_heads=2, linear_num_value_heads=4 if grouped else 2,
                  linear_key_head_dim=8, linear_value_head_dim=12, linear_conv_kernel_dim=4,
                  rms_norm_eps=1e-6, tie_word_embeddings=tied, initializer_range=0.1,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                   "partial_rotary_factor": rotary})
    kwargs.update(overrides)
    return kwargs


def perturb(model, seed=0):
    """Move every norm weight, A_log and dt_bias away from its initial value (in place)."""
    gen = torch.Generator().manual_seed(seed)
    touched = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("norm.weight", "A_log", "dt_bias")):
                param.add_(0.5 * torch.randn(param.shape, generator=gen))
                touched += 1
    assert touched, "no norm / A_log / dt_bias parameter found to perturb"
    return model


def causal_lm(seed=0, **kwargs):
    """A perturbed float32 ``Qwen3_5ForCausalLM``."""
    torch.manual_seed(seed)
    config = Qwen3_5TextConfig(**text_config_kwargs(**kwargs))
    return perturb(Qwen3_5ForCausalLM(config).float().eval(), seed)


def conditional_generation(seed=0, tied=False, **kwargs):
    """A perturbed float32 ``Qwen3_5ForConditionalGeneration`` with a tiny vision tower."""
    torch.manual_seed(seed)
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=4,
                  temporal_patch_size=2, spatial_merge_size=1, out_hidden_size=32,
                  num_position_embeddings=16)
    config = Qwen3_5Config(text_config=text_config_kwargs(tied=tied, **kwargs),
                           vision_config=vision, tie_word_embeddings=tied)
    return perturb(Qwen3_5ForConditionalGeneration(config).float().eval(), seed)


# case -> how its transformers model is built (the configurations the issue asks for)
CASES = {
    "grouped-untied-rotary0.25": lambda: causal_lm(grouped=True, tied=False, rotary=0.25),
    "ungrouped-tied-rotary1.0": lambda: causal_lm(seed=1, grouped=False, tied=True, rotary=1.0),
    "multimodal-grouped-tied-rotary0.5": lambda: conditional_generation(
        seed=2, grouped=True, tied=True, rotary=0.5),
    "multimodal-ungrouped-untied-rotary0.25": lambda: conditional_generation(
        seed=3, grouped=False, tied=False, rotary=0.25),
}


def tokens(seq_len=SEQ, seed=0):
    return np.random.RandomState(seed).randint(0, VOCAB, (BATCH, seq_len)).astype(np.int32)


def reference_logits(model, ids) -> np.ndarray:
    """transformers' own forward (no cache), float32 numpy ``[B, T, vocab]``."""
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(np.asarray(ids), dtype=torch.long), use_cache=False)
    return out.logits.float().numpy()


def rel_err(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _forward(params, ids, model_cfg, sleep_cfg):
    return forward_sequence(params, ids, model_cfg, sleep_cfg)


def sleepjax_logits(params, model_cfg, ids) -> np.ndarray:
    """sleepjax's parallel forward over one window (passes=1, window >= T)."""
    return np.asarray(_forward(params, ids, model_cfg, SLEEP))


def checkpoint_builder(tmp_path_factory, cases):
    """``build(case) -> (directory, transformers model)`` for ``cases[case]()`` models, each
    saved once (in a directory of its own)."""

    @functools.lru_cache(maxsize=None)
    def build(case):
        model = cases[case]()
        directory = tmp_path_factory.mktemp(case)
        model.save_pretrained(directory)
        return str(directory), model

    return build
