"""The training state: one pytree holding everything a step reads and a checkpoint saves."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """``step`` (int32 scalar), ``params``, ``opt_state`` and ``rng`` (a raw uint32 PRNG key).

    ``rng`` is split once per step, so a resumed run draws the same randomness as an
    uninterrupted one.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def init_train_state(model, optimizer: optax.GradientTransformation, rng: jax.Array,
                     example_tokens: jax.Array) -> TrainState:
    """Initialise parameters from ``rng`` and the optimiser state; pure (jit it with out_shardings)."""
    init_rng, state_rng = jax.random.split(rng)
    return train_state_from_params(model.init(init_rng, example_tokens)["params"], optimizer,
                                   state_rng)


def train_state_from_params(params, optimizer: optax.GradientTransformation,
                            state_rng: jax.Array) -> TrainState:
    """Step 0 with ``params`` and a fresh optimiser state; pure."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params), rng=state_rng)
