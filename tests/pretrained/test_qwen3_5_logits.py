"""Loaded Qwen3.5 checkpoints give transformers' logits: parallel forward, streaming, export.

The reference is always transformers' own forward of the model that wrote the checkpoint
(float32, no cache). Relative error = max |diff| / max |ref|; the measured values are printed
(``pytest -s``).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import torch
from transformers import Qwen3_5ForCausalLM

from sleepjax import inference
from sleepjax.models import ModelConfig, init_params
from sleepjax.pretrained import load_pretrained, save_pretrained
from tiny_qwen import BATCH, CASES, REL_TOL, SLEEP, reference_logits, rel_err, sleepjax_logits, tokens


@pytest.mark.parametrize("case", sorted(CASES))
def test_loaded_logits_match_transformers(case, checkpoint):
    directory, model = checkpoint(case)
    params, cfg = load_pretrained(directory)
    ids = tokens()
    ref = reference_logits(model, ids)
    # a chunk size that does not divide T: several chunks and a partial last one
    cfg = dataclasses.replace(cfg, gdn_impl="chunked", gdn_chunk_size=16)
    err = rel_err(sleepjax_logits(params, cfg, ids), ref)
    print(f"\n[{case}] load -> forward_sequence vs transformers: max rel err {err:.2e}")
    assert err < REL_TOL


@pytest.mark.parametrize("case", ["grouped-untied-rotary0.25", "ungrouped-tied-rotary1.0"])
def test_streaming_matches_transformers(case, checkpoint):
    """Feeding the tokens one at a time (T=1 recurrent GDN steps, attention over the KV cache)."""
    directory, model = checkpoint(case)
    params, cfg = load_pretrained(directory)
    ids = tokens()
    state = inference.init_state(cfg, SLEEP, BATCH)
    logits, _, slept = inference.feed(params, state, ids, model_cfg=cfg, sleep_cfg=SLEEP)
    assert not np.asarray(slept).any()
    err = rel_err(logits, reference_logits(model, ids))
    print(f"\n[{case}] streaming feed vs transformers: max rel err {err:.2e}")
    assert err < REL_TOL


@pytest.mark.parametrize("case", ["grouped-untied-rotary0.25", "multimodal-grouped-tied-rotary0.5"])
def test_export_round_trip_in_transformers(case, checkpoint, tmp_path):
    """load -> save_pretrained -> transformers' from_pretrained: the same logits as the original."""
    directory, model = checkpoint(case)
    params, cfg = load_pretrained(directory)
    save_pretrained(params, cfg, str(tmp_path))
    exported = Qwen3_5ForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    ids = tokens(seed=1)
    err = rel_err(reference_logits(exported, ids), reference_logits(model, ids))
    print(f"\n[{case}] exported checkpoint in transformers vs original: max rel err {err:.2e}")
    assert err < 1e-6    # the same float32 weights, only rearranged


def _qwen_like_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=61, d_model=32, layer_pattern="GAG", attn_heads=4, attn_kv_heads=2,
                attn_head_dim=16, attn_output_gate=True, attn_qk_norm=True, rope_fraction=0.5,
                gdn_heads=2, gdn_head_dim=8, gdn_value_heads=4, gdn_value_head_dim=12,
                mlp_hidden=40, conv_size=4, tie_embeddings=False, zero_centered_norms=True,
                gdn_impl="chunked", gdn_chunk_size=16)
    base.update(overrides)
    return ModelConfig(**base)


def _random_params(cfg: ModelConfig, seed=0):
    """Random values in init_params' tree (its shapes via eval_shape: the eager init is slow
    on CPU). No leaf is at an initial value: norms are not 0 / 1, A_log and dt_bias random."""
    rng = np.random.RandomState(seed)

    def fill(path, leaf):
        name, shape = jax.tree_util.keystr(path), leaf.shape
        if len(shape) == 2 and "conv" not in name:              # kernels [in, out], embedding
            return (rng.standard_normal(shape) / np.sqrt(shape[0] if "embedding" not in name else 1))
        if "out_norm" in name:                                   # the plain (not zero-centred) norm
            return 1.0 + 0.3 * rng.standard_normal(shape)
        return 0.3 * rng.standard_normal(shape)                  # conv, zero-centred norms, A_log, dt_bias

    abstract = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
    return jax.tree_util.tree_map_with_path(lambda p, x: fill(p, x).astype(np.float32), abstract)


@pytest.mark.parametrize("tied", [False, True])
def test_exported_sleepjax_model_runs_the_same_in_transformers(tied, tmp_path):
    """A sleepjax-initialised model, exported: transformers' logits equal sleepjax's."""
    cfg = _qwen_like_config(tie_embeddings=tied)
    params = _random_params(cfg)
    save_pretrained(params, cfg, str(tmp_path), max_shard_bytes=20_000)   # sharded, with index
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model = Qwen3_5ForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    ids = tokens(seed=2) % cfg.vocab_size
    err = rel_err(sleepjax_logits(params, cfg, ids), reference_logits(model, ids))
    print(f"\n[sleepjax random params, tied={tied}] exported to transformers: max rel err {err:.2e}")
    assert err < REL_TOL
