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
    count = rc.train.eval_examples if num_examples is None else num_examples
    params = jax.device_get(params)
    return {str(n): _evaluate(rc, params, dataclasses.replace(rc.sleep, passes=int(n)), count)
            for n in passes}


def evaluate_adaptive(cfg, params, tol: float, cap: int, *, num_examples: int | None = None
                      ) -> dict:
    """The evaluation of ``params`` with adaptive sleep: at most ``cap`` passes per window,
    stopping per row once the fast weights change by less than ``tol`` (``sleep.adaptive_tol``);
    the result's ``sleep_passes`` holds the mean and histogram of the passes used."""
    rc = validate_config(cfg)
    count = rc.train.eval_examples if num_examples is None else num_examples
    sleep_cfg = dataclasses.replace(rc.sleep, passes=int(cap), adaptive_tol=float(tol))
    return _evaluate(rc, jax.device_get(params), sleep_cfg, count)


def _evaluate(rc, params, sleep_cfg, count: int) -> dict:
    test_source = data.make_source(rc.task, "test", rc.train.seed)
    step = jax.jit(make_eval_step(SleepLM(rc.model, sleep_cfg)))
    return evaluation.evaluate(lambda batch: step(params, batch), test_source, count,
                               rc.train.eval_batch_size)
