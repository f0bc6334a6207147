"""The step-0 parameters of a run with an ``init`` source (see
:mod:`sleepjax.training.initialization` for the config and the recipe)."""

from __future__ import annotations

import dataclasses


from sleepjax.models.config import ModelConfig
from sleepjax.models.surgery import insert_blocks
from sleepjax.models.validation import tree_differences
from sleepjax.training import initialization
from sleepjax.training.checkpointing import load_params
from sleepjax.training.initialization import InitConfig


def initial_params(init: InitConfig, model: ModelConfig, rng):
    """The source's parameters with the inserted blocks, for ``model`` (the run's resolved
    config). ``rng``: the key the trainer would pass to ``init_params`` (the new blocks' values
    are ``init_params(model, rng)``'s blocks of those names, before ``insert_zero_output``)."""
    if init.checkpoint_dir:
        params, source = initialization.load_pretrained_params(init.checkpoint_dir)
    else:
        loaded = load_params(init.from_run, init.from_run_step)
        params, source = loaded.params, loaded.model
    # the run's own fields (compute dtype, the GDN shape of an attention-only source)
    source = dataclasses.replace(source, **{k: getattr(model, k)
                                            for k in initialization.run_keys(source)})
    if init.insert_gdn_at:
        params, source = insert_blocks(params, source, init.insert_gdn_at, init.insert_kind,
                                       rng, zero_output=init.insert_zero_output)
    if initialization.architecture(source) != initialization.architecture(model) \
            or source.vocab_size != model.vocab_size:
        raise ValueError(f"{init.source_key}: the loaded model's config differs from the one "
                         f"validated for this run (did the source change?): {source} vs {model}")
    return params


def check_params_match(params, abstract_params, key: str) -> None:
    """Raise naming the first differing leaves if ``params`` is not shaped like the model's."""
    problems = tree_differences(params, abstract_params)
    if problems:
        more = f" ... and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise ValueError(f"{key}: the loaded parameters do not fit the model: "
                         + "; ".join(problems[:5]) + more)
