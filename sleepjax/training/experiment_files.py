"""What experiment config files (``experiments/*.py``) and the sweep share: variants, sweeps
over N and over the stable-training recipes, dotted-key overrides, loading a file by path.

Experiment files are loaded by path (``--config=experiments/rule110.py:tiny`` from any
directory), so what they import must be importable from the installed package: this module.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import ml_collections

def parse_variant(arg: str | None, variants: tuple[str, ...], default: str) -> str:
    """The variant named by the ``:arg`` suffix of ``--config=file.py:arg`` (``default`` if none)."""
    variant = (arg or default).strip()
    if variant not in variants:
        raise ValueError(f"config variant: must be one of {list(variants)} (got {variant!r})")
    return variant


def passes_sweep(values) -> list[dict[str, Any]]:
    """A sweep over the number of sleep passes N: one ``{"sleep.passes": N}`` override per run."""
    return [{"sleep.passes": int(n)} for n in values]


def named_sweep(name: str | None, passes, recipe_passes: int = 4) -> list[dict[str, Any]]:
    """A config file's ``get_sweep(name)``: the sweep over N in ``passes`` by default,
    ``"recipes"`` the stable-training recipes against fixed N = ``recipe_passes``."""
    if name == "recipes":
        return stable_training_recipes(passes=recipe_passes)
    if name is not None:
        raise ValueError(f"--sweep: unknown sweep {name!r}; known: 'recipes'")
    return passes_sweep(passes)


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Mapping[str, Any]
                    ) -> ml_collections.ConfigDict:
    """A copy of ``cfg`` with dotted-key ``overrides`` applied (``{"sleep.passes": 2}``).

    An unknown key raises ValueError naming it (the config files lock their ConfigDicts).
    """
    out = copy.deepcopy(cfg)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = out
        for name in parents:
            if name not in node:
                raise ValueError(f"{key}: unknown config key")
            node = node[name]
        if leaf not in node:
            raise ValueError(f"{key}: unknown config key")
        try:
            node[leaf] = value
        except TypeError as e:
            raise ValueError(f"{key}: {e}") from None
    return out


def load_config_module(path: str):
    """Import an experiment config file (``experiments/rule110.py``) by path, as config_flags does."""
    import importlib.util
    import os

    if not os.path.isfile(path):
        raise ValueError(f"--config: no such config file {path!r}")
    name = "sleepjax_experiment_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(spec: str) -> ml_collections.ConfigDict:
    """``"experiments/rule110.py:tiny"`` -> that file's ``get_config("tiny")``."""
    path, _, arg = spec.partition(":")
    return load_config_module(path).get_config(arg or None)


def stable_training_recipes(passes: int = 4, warmup_fraction: float = 0.25) -> list[dict[str, Any]]:
    """The sleep-training recipes compared with fixed N = ``passes`` (evaluated at ``passes``):
    truncated backprop through the last 1 or 2 passes, a random N per step (uniform 1..6, and
    Huginn's Poisson-lognormal law with mean ``passes`` capped at 2 * ``passes``), and the
    curriculum (N ramped up from 1 over ``warmup_fraction`` of the steps) of the fixed and
    random laws, and last the curriculum of uniform 3..6."""
    base = {"sleep.passes": int(passes)}
    uniform = {"sleep.train_passes": "uniform:1:6"}
    poisson = {"sleep.train_passes": f"poisson_lognormal:{passes}:{2 * passes}"}
    ramp = {"sleep.passes_warmup_fraction": float(warmup_fraction)}
    # Appended last so that earlier settings keep their --settings index: the curriculum with a
    # uniform law that never draws N < 3 once ramped (random N without N = 1 and 2 after it).
    uniform_from_3 = {"sleep.train_passes": "uniform:3:6"}
    recipes = [{}, {"sleep.backprop_passes": 1}, {"sleep.backprop_passes": 2}, uniform, poisson,
               ramp, {**uniform, **ramp}, {**poisson, **ramp}, {**uniform_from_3, **ramp}]
    return [{**base, **recipe} for recipe in recipes]
