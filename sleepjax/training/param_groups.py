"""Parameter groups by path: which parameters ``optim.trainable`` selects.

A pattern is a regex over '/'-joined parameter paths (``blocks_3/gdn/wq``) that selects a
parameter if it matches the whole path or a leading run of whole components
(``re.fullmatch(pattern + "(/.*)?", path)``): ``"blocks_1"`` selects ``blocks_1/...`` but not
``blocks_10/...``; ``r"blocks_(2|5)/gdn"`` two GDN mixers; ``"embed"`` the embedding.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax

from sleepjax.parallel.logical_axes import path_to_str

TRAINABLE = "trainable"
FROZEN = "frozen"


def check_trainable_patterns(patterns, key: str = "optim.trainable") -> tuple[str, ...]:
    """``patterns`` as a tuple of valid regex strings, or ValueError naming ``key``."""
    if isinstance(patterns, str) or not isinstance(patterns, Sequence):
        raise ValueError(f"{key}: must be a tuple of regexes over '/'-joined parameter paths, "
                         f"e.g. ('blocks_3/gdn',) (got {patterns!r})")
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"{key}: every pattern must be a non-empty string (got {pattern!r})")
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"{key}: {pattern!r} is not a regex ({error})") from None
    return tuple(patterns)


def is_trainable(path: str, patterns: Sequence[str]) -> bool:
    """Whether the parameter at ``path`` trains under ``patterns`` (all do when there are none)."""
    return not patterns or any(re.fullmatch(f"(?:{p})(?:/.*)?", path) for p in patterns)


def unmatched_patterns(paths: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """The patterns that select none of ``paths`` (a config error: probably a typo)."""
    return [p for p in patterns if not any(is_trainable(path, (p,)) for path in paths)]


def trainable_labels(params, patterns: Sequence[str]) -> Any:
    """A pytree like ``params`` with ``"trainable"`` / ``"frozen"`` leaves."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: TRAINABLE if is_trainable(path_to_str(path), patterns) else FROZEN,
        params)


def freeze_untrainable(params, patterns: Sequence[str]):
    """``params`` with every parameter ``patterns`` does not select behind ``stop_gradient``."""
    return jax.tree.map(lambda label, leaf: leaf if label == TRAINABLE else jax.lax.stop_gradient(leaf),
                        trainable_labels(params, patterns), params)
