"""Shared tiny configs and cached jitted functions for the model / inference tests.

Compilation dominates on CPU, so the jitted functions are module-level (their caches are
shared by every test of a worker process) and the shapes are few: B=2, L=4, T in {11, 12}.
"""

import functools

import jax
import numpy as np

from sleepjax.models import ModelConfig, SleepConfig, forward_sequence, init_params
from sleepjax.training.loss import full_logits_token_losses, reduce_answer_loss

VOCAB = 11
WINDOW = 4
BATCH = 2


def model_config(**overrides):
    base = dict(vocab_size=VOCAB, d_model=32, layer_pattern="AGAG", attn_heads=2, attn_head_dim=8,
                gdn_heads=2, gdn_head_dim=8, mlp_hidden=64, conv_size=3, gdn_impl="recurrent",
                gdn_chunk_size=4)
    base.update(overrides)
    return ModelConfig(**base)


def sleep_config(**overrides):
    base = dict(window=WINDOW, passes=1, eviction="hard")
    base.update(overrides)
    return SleepConfig(**base)


@functools.lru_cache(maxsize=None)
def params_for(model_cfg, seed=0):
    return init_params(model_cfg, jax.random.PRNGKey(seed))


def tokens(seq_len, seed=0, low=0, high=VOCAB):
    return np.random.RandomState(seed).randint(low, high, (BATCH, seq_len)).astype(np.int32)


forward = jax.jit(forward_sequence, static_argnames=("model_cfg", "sleep_cfg"))


def masked_mean_loss(logits, targets, mask):
    """Mean next-token cross-entropy of full ``logits`` where ``mask`` is non-zero (the
    training loss from full logits: sleepjax.training.loss)."""
    ce, correct = full_logits_token_losses(logits, targets)
    return reduce_answer_loss(ce, correct, mask)[0]


def max_rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def perturbed_norms(params, scale=0.2, seed=0):
    """``params`` with every norm scale moved off its initial value (1, or 0 when zero-centred),
    so that a forward which ignored a norm or its (1 + w) convention would show."""
    flat = jax.tree_util.tree_flatten_with_path(params)
    leaves = []
    for i, (path, leaf) in enumerate(flat[0]):
        if "norm" in jax.tree_util.keystr(path):
            noise = jax.random.normal(jax.random.PRNGKey(seed + i), leaf.shape, leaf.dtype)
            leaf = leaf + scale * noise
        leaves.append(leaf)
    return jax.tree_util.tree_unflatten(flat[1], leaves)
