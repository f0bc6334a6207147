"""Evaluate trained parameters with a number of sleep passes N' other than the training N.

The paper evaluates every model only at its training N. Evaluating at N' != N tells whether a
model learned to *use* extra passes (accuracy rising with N' beyond N) or merely co-adapted to
one unroll depth (accuracy collapsing away from N). The parameters do not depend on the sleep
config, so the same ``params`` serve every N'.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax

from sleepjax import data
from sleepjax.models import SleepLM
from sleepjax.training import evaluate as evaluation
from sleepjax.training.config import validate_config
from sleepjax.training.train_step import make_eval_step


def evaluate_at_passes(cfg, params, passes: Sequence[int], *, num_examples: int | None = None
                       ) -> dict[str, dict]:
    """``{str(N'): evaluation result}`` of ``params`` on ``cfg``'s test split for each N'.

    ``cfg`` is the experiment config the parameters were trained with (its ``sleep.passes`` is
    replaced by each N'); ``num_examples`` defaults to ``train.eval_examples``. Runs on the
    default device, unsharded (evaluation of small CPU-scale runs).
    """
    rc = validate_config(cfg)
    bad = [n for n in passes if isinstance(n, bool) or not isinstance(n, int) or n < 1]
    if bad:
        raise ValueError(f"--eval_passes: every N' must be an int >= 1 (got {bad})")
    test_source = data.make_source(rc.task, "test", rc.train.seed)
    count = rc.train.eval_examples if num_examples is None else num_examples
    params = jax.device_get(params)
    results = {}
    for n in passes:
        model = SleepLM(rc.model, dataclasses.replace(rc.sleep, passes=int(n)))
        step = jax.jit(make_eval_step(model))
        results[str(n)] = evaluation.evaluate(lambda batch, step=step: step(params, batch),
                                              test_source, count, rc.train.eval_batch_size)
    return results
