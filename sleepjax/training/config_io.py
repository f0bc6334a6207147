"""A run's config on disk: flattening and back, what may change on resume, and reading the
model a saved config describes.

Checkpoints, ``config.json``, sweep points and logs store an experiment config flattened
(``{"section.key": value}``, JSON-normalised). This module is the one home of that form:
:func:`flatten_config` / :func:`unflatten_config`, the comparisons a resume and a sweep make
(:func:`config_differences`, :func:`same_config`, :data:`RESUMABLE_KEYS`), and
:func:`saved_run_configs`, the typed model and sleep configs of a saved run (loading its
weights or starting another run from them), which builds nothing else.
"""

from __future__ import annotations

from typing import Any, Mapping

import ml_collections

from sleepjax.models.config import ModelConfig, SleepConfig

CHECKPOINT_SUBDIR = "checkpoints"   # <workdir>/checkpoints/<step>/

# Keys that may differ between a checkpoint's config and the config resuming from it: they
# change how long / how visibly the run goes, not what the saved state means.
RESUMABLE_KEYS = (
    "train.steps", "train.log_every", "train.eval_every", "train.eval_examples",
    "train.eval_batch_size", "train.checkpoint_every", "train.keep_checkpoints",
    "train.async_checkpointing", "train.progress_bar",
)
RESUMABLE_PREFIXES = ("mesh.",)   # a checkpoint restores onto any mesh


def flatten_config(cfg) -> dict[str, Any]:
    """``{"section.key": value}`` for a (nested) ConfigDict or dict; tuples become lists (JSON-like)."""
    flat: dict[str, Any] = {}

    def visit(prefix, node):
        if isinstance(node, (ml_collections.ConfigDict, Mapping)):
            items = node.items()
            for k, v in items:
                visit(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = list(node) if isinstance(node, tuple) else node

    visit("", cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else cfg)
    return flat


def same_config(saved, current, defaults: Mapping[str, Any]) -> bool:
    """Whether two configs are equal, every key included; a key ``saved`` lacks counts as equal
    when ``current`` has its value in ``defaults`` (flat; ``config.flat_defaults``): an option
    added later, with the old behaviour."""
    a, b = flatten_config(saved), flatten_config(current)
    missing = [k for k in b if k not in a]
    if any(k not in defaults or b[k] != defaults[k] for k in missing):
        return False
    return all(a[k] == b.get(k, "<absent>") for k in a)


def config_differences(saved, current, defaults: Mapping[str, Any]) -> list[str]:
    """Keys whose values differ between two configs, ignoring :data:`RESUMABLE_KEYS`.

    A key the saved config lacks counts as equal when the current value is that key's value in
    ``defaults`` (flat; ``config.flat_defaults``): options are added with a default that keeps
    the old behaviour, so a checkpoint written before an option existed still resumes.
    """
    a, b = flatten_config(saved), flatten_config(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in RESUMABLE_KEYS or key.startswith(RESUMABLE_PREFIXES):
            continue
        if key not in a and key in defaults and b.get(key) == defaults[key]:
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            diffs.append(f"{key}: checkpoint has {a.get(key, '<absent>')!r}, "
                         f"config has {b.get(key, '<absent>')!r}")
    return diffs


def unflatten_config(flat: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The nested ConfigDict of a ``{"section.key": value}`` dict (:func:`flatten_config`'s
    inverse)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return ml_collections.ConfigDict(nested)


def _section(flat: Mapping[str, Any], name: str) -> dict[str, Any]:
    prefix = name + "."
    return {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}


def saved_run_configs(config) -> tuple[ModelConfig, SleepConfig]:
    """The typed model and sleep configs of a saved experiment config (nested or flat).

    A saved config has its architecture written out when it started from a source (see
    ``initialization.explicit_model_section``); otherwise the vocabulary is its task's (read
    from the task's training split, the only data this builds) and an unset window the task's
    natural one. No mesh, optimiser or evaluation data is involved: they decide how a run went,
    not what its parameters are.
    """
    from sleepjax import data
    from sleepjax.models.validation import check_configs

    flat = flatten_config(config)
    task = unflatten_config(_section(flat, "task"))
    model, sleep = _section(flat, "model"), _section(flat, "sleep")
    vocab = model.pop("vocab_size", None) or int(
        data.make_source(task, "train", int(flat.get("train.seed", 0))).vocab_size)
    if sleep.get("window") is None:
        sleep["window"] = data.default_window(task)
    if isinstance(sleep.get("loop_range"), list):
        sleep["loop_range"] = tuple(sleep["loop_range"])
    model_cfg = ModelConfig.from_dict({**model, "vocab_size": vocab})
    sleep_cfg = SleepConfig.from_dict(sleep)
    check_configs(model_cfg, sleep_cfg)
    return model_cfg, sleep_cfg
