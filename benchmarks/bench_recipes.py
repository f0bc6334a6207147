"""Training-step time of the stable-training recipes relative to fixed N = 4, side by side.

For an experiment config (default: the Rule 110 ``cpu`` variant, batch 64), every recipe of
:func:`sleepjax.training.experiment_files.stable_training_recipes` is compiled once and its
step timed alternately with the others (medians of ``--repeats`` rounds), each at the N of
its own law: fixed N = 4, truncated backprop (k = 1, 2) at N = 4, and the random laws at their
mean N (uniform 1..6: 3.5, drawn as N = 3 and N = 4 alternately; Poisson-lognormal: 4). The
table gives ms per step and the ratio to fixed N = 4; the ratio is what to quote.

  python benchmarks/bench_recipes.py [--config experiments/rule110.py:cpu] [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from machine_info import machine_description  # noqa: E402  (benchmarks/, beside this script)
from sleepjax import data  # noqa: E402
from sleepjax.models import SleepLM  # noqa: E402
from sleepjax.training.config import validate_config  # noqa: E402
from sleepjax.training.experiment_files import (apply_overrides, load_config,  # noqa: E402
                                                stable_training_recipes)
from sleepjax.training.optimizer import make_optimizer  # noqa: E402
from sleepjax.training.state import init_train_state  # noqa: E402
from sleepjax.training.train_step import make_train_step  # noqa: E402


def recipe_label(recipe: dict) -> str:
    parts = [f"{k.split('.')[-1]}={v}" for k, v in recipe.items() if k != "sleep.passes"]
    return ", ".join(parts) or "fixed N=4"


def build(cfg, recipe: dict):
    """A timed step of ``recipe``: ``run()`` runs one step at the law's typical N."""
    rc = validate_config(apply_overrides(cfg, recipe))
    model = SleepLM(rc.model, rc.sleep)
    optimizer = make_optimizer(rc.optim, rc.train.steps)
    source = data.make_source(rc.task, "train", 0)
    batch = next(iter(data.make_dataset(source, batch_size=rc.train.batch_size, seed=0,
                                        shuffle=False)))
    batch = {k: jnp.asarray(batch[k]) for k in ("inputs", "targets", "loss_mask")}
    state = init_train_state(model, optimizer, jax.random.PRNGKey(0), batch["inputs"][:1])
    step = make_train_step(model, optimizer)
    if rc.sleep.fixed_training_passes:
        compiled = jax.jit(step).lower(state, batch).compile()
        return lambda: jax.block_until_ready(compiled(state, batch)), rc
    compiled = jax.jit(step).lower(state, batch, jnp.int32(4)).compile()
    law = rc.sleep.train_pass_law
    typical = [3, 4] if law.kind == "uniform" else [4]
    count = [0]

    def run():
        n = typical[count[0] % len(typical)]
        count[0] += 1
        return jax.block_until_ready(compiled(state, batch, np.int32(n)))

    return run, rc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="experiments/rule110.py:cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    recipes = [r for r in stable_training_recipes(passes=4)
               if "sleep.passes_warmup_fraction" not in r]   # a ramp only changes which N runs
    print(f"# bench_recipes  {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(f"# machine: {machine_description()}")
    print(f"# command: python {' '.join(sys.argv)}")
    runners = {}
    for recipe in recipes:
        run, rc = build(cfg, recipe)
        runners[recipe_label(recipe)] = run
        run()                                                           # warm-up
    times = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    base = med["fixed N=4"]
    print(f"\nbatch {rc.train.batch_size} x T {rc.seq_len}; medians of {args.repeats} rounds, "
          "alternated\n\n| recipe (evaluated at N = 4) | N timed | ms / step | ratio to fixed N = 4 |")
    print("|---|---|---|---|")
    for name in runners:
        n = "3, 4 alternately" if "uniform" in name else "4"
        print(f"| {name} | {n} | {1e3 * med[name]:.1f} | {med[name] / base:.2f} |")


if __name__ == "__main__":
    main()
