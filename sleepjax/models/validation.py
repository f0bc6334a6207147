"""Input validation: clear ValueErrors naming the offending field, raised before any compute."""

from __future__ import annotations

import jax
import numpy as np

from sleepjax.models.config import ModelConfig, SleepConfig


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def validate_tokens(tokens, vocab_size: int, mask=None):
    """Check a token batch (and optionally its loss mask); raises ValueError naming the argument.

    * ``tokens`` must be an integer array of rank 2 ``[B, T]`` with ``B, T >= 1``; when it is
      concrete (not traced under jit) every id must lie in ``[0, vocab_size)``.
    * ``mask`` (optional) must have exactly the shape of ``tokens``.

    Returns None. Called by ``SleepLM.__call__`` and by the training loop outside jit.
    """
    shape = tuple(getattr(tokens, "shape", ()))
    dtype = getattr(tokens, "dtype", None)
    if dtype is None or not np.issubdtype(np.dtype(dtype), np.integer):
        raise ValueError(f"tokens: must be an integer array of token ids, got dtype {dtype}")
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"tokens: must have shape [batch, seq_len] with both >= 1, got shape {shape}")
    if mask is not None:
        mask_shape = tuple(getattr(mask, "shape", np.shape(mask)))
        if mask_shape != shape:
            raise ValueError(f"mask: shape {mask_shape} differs from the shape of tokens {shape}")
    if _is_concrete(tokens):
        values = np.asarray(tokens)
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= vocab_size:
            bad = values[(values < 0) | (values >= vocab_size)]
            raise ValueError(f"tokens: ids must lie in [0, vocab_size={vocab_size}), found "
                             f"{bad.size} outside (min {lo}, max {hi})")


def check_configs(model_cfg: ModelConfig, sleep_cfg: SleepConfig):
    """Cross-field checks between the model and sleep configs (each is valid on its own)."""
    if not isinstance(model_cfg, ModelConfig):
        raise ValueError(f"model_cfg: must be a ModelConfig, got {type(model_cfg).__name__}")
    if not isinstance(sleep_cfg, SleepConfig):
        raise ValueError(f"sleep_cfg: must be a SleepConfig, got {type(sleep_cfg).__name__}")
    start, end = sleep_cfg.resolved_loop_range(model_cfg.num_layers)
    if sleep_cfg.passes > 1 and "G" not in model_cfg.layer_pattern[start:end]:
        raise ValueError(
            f"sleep.loop_range: blocks {start}..{end - 1} ({model_cfg.layer_pattern[start:end]!r}) "
            f"contain no 'G' block, so sleep passes could not change the fast weights "
            f"(got loop_range={sleep_cfg.loop_range!r}, passes={sleep_cfg.passes})")
