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
    check_token_ids("tokens", tokens, vocab_size)


def check_token_ids(name: str, tokens, vocab_size: int):
    """When ``tokens`` is concrete (not traced under jit), every id must lie in ``[0, vocab_size)``."""
    if not _is_concrete(tokens):
        return
    values = np.asarray(tokens)
    if not values.size:
        return
    if values.size <= 256:                     # a decode step's few ids: Python is faster
        ids = values.ravel().tolist()
        lo, hi = min(ids), max(ids)
    else:
        lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= vocab_size:
        bad = values[(values < 0) | (values >= vocab_size)]
        raise ValueError(f"{name}: ids must lie in [0, vocab_size={vocab_size}), found "
                         f"{bad.size} outside (min {lo}, max {hi})")


def tree_layout(abstract_tree):
    """``(treedef, [(path, shape, dtype)], [(shape, dtype)])`` of a pytree of arrays or
    ShapeDtypeStructs (the last list is what a matching tree's leaves compare equal to)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_tree)
    expected = [(jax.tree_util.keystr(path), tuple(leaf.shape), np.dtype(leaf.dtype))
                for path, leaf in leaves]
    return treedef, expected, [(shape, dtype) for _, shape, dtype in expected]




def tree_differences(tree, reference, *, dtypes: bool = True) -> list[str]:
    """Every way ``tree``'s leaves differ from ``reference``'s (arrays or ShapeDtypeStructs):
    missing and unexpected paths, then leaves of another shape (and dtype, if ``dtypes``)."""
    def flat(t):
        return {jax.tree_util.keystr(p): (_shape_and_dtype(x) if dtypes else tuple(np.shape(x)))
                for p, x in jax.tree_util.tree_leaves_with_path(t)}

    got, want = flat(tree), flat(reference)
    problems = [f"{k} missing" for k in sorted(want.keys() - got.keys())]
    problems += [f"{k} unexpected" for k in sorted(got.keys() - want.keys())]
    problems += [f"{k} is {got[k]}, needs {want[k]}"
                 for k in sorted(want.keys() & got.keys()) if got[k] != want[k]]
    return problems


def _shape_and_dtype(leaf):
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return tuple(leaf.shape), leaf.dtype
    value = np.asarray(leaf)
    return value.shape, value.dtype


def check_tree_shapes(name: str, tree, layout, expected_from):
    """``tree`` has the structure, shapes and dtypes of ``layout`` (from :func:`tree_layout`).

    Raises ValueError naming the first differing leaf as ``name<path>`` and what
    ``expected_from()`` (e.g. the configs; a callable, formatted only on failure) needs
    instead. Host-side: reads shapes only; the common case is one list comparison.
    """
    treedef, expected, signature = layout
    leaves, got_def = jax.tree_util.tree_flatten(tree)
    if got_def == treedef:
        try:
            if [(leaf.shape, leaf.dtype) for leaf in leaves] == signature:
                return
        except AttributeError:                 # a leaf that is not an array: the slow path says which
            pass
    expected_from = expected_from()
    if got_def != treedef:
        got_paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}
        want_paths = {p for p, _, _ in expected}
        raise ValueError(f"{name}: its entries do not match {expected_from}: missing "
                         f"{[name + p for p in sorted(want_paths - got_paths)]}, unexpected "
                         f"{[name + p for p in sorted(got_paths - want_paths)]}")
    for leaf, (path, shape, dtype) in zip(leaves, expected):
        got_shape, got_dtype = _shape_and_dtype(leaf)
        if got_shape != shape or got_dtype != dtype:
            raise ValueError(f"{name}{path}: shape {got_shape} {got_dtype}, but {expected_from} "
                             f"needs {shape} {dtype}")


def check_configs(model_cfg: ModelConfig, sleep_cfg: SleepConfig):
    """Cross-field checks between the model and sleep configs (each is valid on its own)."""
    if not isinstance(model_cfg, ModelConfig):
        raise ValueError(f"model_cfg: must be a ModelConfig, got {type(model_cfg).__name__}")
    if not isinstance(sleep_cfg, SleepConfig):
        raise ValueError(f"sleep_cfg: must be a SleepConfig, got {type(sleep_cfg).__name__}")
    if "G" not in model_cfg.mixer_pattern:
        raise ValueError(
            f"model.layer_pattern: needs at least one 'G' block: only fast weights cross a window "
            f"boundary, so a model without one cannot remember anything (insert GDN blocks into "
            f"an attention-only model first) (got {model_cfg.layer_pattern!r})")
    start, end = sleep_cfg.resolved_loop_range(model_cfg.num_layers)
    if sleep_cfg.passes > 1 and "G" not in model_cfg.mixer_pattern[start:end]:
        raise ValueError(
            f"sleep.loop_range: blocks {start}..{end - 1} ({model_cfg.layer_pattern[start:end]!r}) "
            f"contain no 'G' block, so sleep passes could not change the fast weights "
            f"(got loop_range={sleep_cfg.loop_range!r}, passes={sleep_cfg.passes})")


# ----------------------------------------------------------------------------- streaming calls

def check_stream_token(token, batch: int, vocab_size: int):
    """``token [batch]``: one integer id per stream, in the vocabulary when concrete."""
    shape = tuple(getattr(token, "shape", ()))
    if shape != (batch,):
        raise ValueError(f"token: must have shape [batch={batch}] (one id per stream of the state), "
                         f"got shape {shape}")
    if not np.issubdtype(np.dtype(token.dtype), np.integer):
        raise ValueError(f"token: must be integer ids, got dtype {token.dtype}")
    check_token_ids("token", token, vocab_size)


def check_stream_tokens(tokens, batch: int, vocab_size: int):
    """``tokens [batch, T>=1]`` of integer ids, in the vocabulary when concrete."""
    shape = tuple(getattr(tokens, "shape", ()))
    if len(shape) != 2 or shape[0] != batch or shape[1] < 1:
        raise ValueError(f"tokens: must have shape [batch={batch}, T>=1], got {shape}")
    validate_tokens(tokens, vocab_size)


def check_open_window(position, window: int, call: str):
    """A wake step needs room in the window: ``0 <= position < window`` (None: traced, unchecked)."""
    if position is None:
        return
    if position == window:
        raise ValueError(f"state.position: the window is full (position {position} == window "
                         f"{window}); call inference.sleep before {call} (step, feed and prefill "
                         f"sleep by themselves when a window fills)")
    if not 0 <= position < window:
        raise ValueError(f"state.position: must be in [0, window = {window}) for {call}, "
                         f"got {position}")
