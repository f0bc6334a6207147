"""How many sleep passes N a training step uses: ``sleep.train_passes`` and its curriculum.

Laws (the value of ``sleep.train_passes``):

* ``"fixed"`` -- every step trains at ``sleep.passes``;
* ``"uniform:A:B"`` -- N drawn uniformly from ``A..B`` (inclusive) each step;
* ``"poisson_lognormal:MEAN:MAX"`` -- Huginn's heavy-tailed law (Geiping et al. 2025):
  ``N = 1 + Poisson(lambda)``, ``log lambda ~ Normal(log(MEAN - 1) - sigma^2 / 2, sigma)``,
  ``sigma = 0.5``, so that the mean of N is ``MEAN``; capped at ``MAX``.

``sleep.passes_warmup_fraction = f`` ramps the law from N = 1 to its target over the first
``f`` of the steps (linearly), then holds (McLeish et al.'s curriculum): ``fixed`` ramps N itself,
``uniform`` both bounds, ``poisson_lognormal`` the mean (the cap stays).

One N per step for the whole global batch, a pure function of ``(seed, step)`` (see
:func:`passes_for_step`): every host draws the same N, and a resumed run draws the same
sequence as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

LAWS = ("fixed", "uniform", "poisson_lognormal")
LOGNORMAL_SIGMA = 0.5
_STREAM_TAG = 0x5EE9   # separates this stream from any other use of (seed, step)


@dataclasses.dataclass(frozen=True)
class PassLaw:
    """A parsed ``sleep.train_passes``: ``kind`` in :data:`LAWS` and its parameters."""

    kind: str
    low: int = 1           # uniform: A
    high: int = 1          # uniform: B; poisson_lognormal: MAX
    mean: float = 1.0      # poisson_lognormal: MEAN


def _fail(msg: str, value) -> ValueError:
    return ValueError(f"sleep.train_passes: {msg} (got {value!r})")


def parse_train_passes(text) -> PassLaw:
    """Parse ``sleep.train_passes``; a bad value raises one ValueError naming the key."""
    if not isinstance(text, str):
        raise _fail("must be a string: 'fixed', 'uniform:A:B' or 'poisson_lognormal:MEAN:MAX'",
                    text)
    name, *args = text.strip().split(":")
    if name not in LAWS:
        raise ValueError(f"sleep.train_passes: unknown law {name!r}; known: 'fixed', "
                         f"'uniform:A:B', 'poisson_lognormal:MEAN:MAX' (got {text!r})")
    if name == "fixed":
        if args:
            raise _fail("'fixed' takes no parameters (it trains at sleep.passes)", text)
        return PassLaw("fixed")
    if len(args) != 2:
        raise _fail(f"{name!r} takes two parameters separated by ':'", text)
    if name == "uniform":
        try:
            low, high = int(args[0]), int(args[1])
        except ValueError:
            raise _fail("'uniform:A:B' needs integers A and B", text) from None
        if not 1 <= low <= high:
            raise _fail("'uniform:A:B' needs 1 <= A <= B", text)
        return PassLaw("uniform", low=low, high=high)
    try:
        mean, cap = float(args[0]), int(args[1])
    except ValueError:
        raise _fail("'poisson_lognormal:MEAN:MAX' needs a number MEAN and an integer MAX",
                    text) from None
    if not (math.isfinite(mean) and 1 <= mean <= cap):
        raise _fail("'poisson_lognormal:MEAN:MAX' needs 1 <= MEAN <= MAX", text)
    return PassLaw("poisson_lognormal", high=cap, mean=mean)


def max_passes(law: PassLaw, passes: int) -> int:
    """The largest N the law can draw (``passes`` for ``fixed``)."""
    return passes if law.kind == "fixed" else law.high


def is_fixed(law: PassLaw, warmup_fraction: float) -> bool:
    """Every step trains at ``sleep.passes`` (no law, no curriculum): today's static program."""
    return law.kind == "fixed" and warmup_fraction == 0


def _ramp(step: int, total_steps: int, warmup_fraction: float) -> float:
    if warmup_fraction == 0:
        return 1.0
    return min(1.0, step / (warmup_fraction * total_steps))


def _towards(target: float, ramp: float) -> int:
    """``1 + ramp * (target - 1)`` rounded half up."""
    return int(math.floor(1 + ramp * (target - 1) + 0.5))


def passes_for_step(law: PassLaw, passes: int, warmup_fraction: float, total_steps: int,
                    seed: int, step: int) -> int:
    """N of training step ``step`` (0-based) of a run of ``total_steps`` with ``train.seed``."""
    ramp = _ramp(step, total_steps, warmup_fraction)
    if law.kind == "fixed":
        return _towards(passes, ramp)
    rng = np.random.default_rng([int(seed), int(step), _STREAM_TAG])
    if law.kind == "uniform":
        return int(rng.integers(_towards(law.low, ramp), _towards(law.high, ramp) + 1))
    mean = 1 + ramp * (law.mean - 1)
    if mean <= 1:
        return 1
    sigma = LOGNORMAL_SIGMA
    lam = math.exp(rng.normal(math.log(mean - 1) - sigma ** 2 / 2, sigma))
    return int(min(1 + rng.poisson(lam), law.high))
