"""Shardings of the model's state trees: parameters, the whole TrainState, the streaming state.

Parameters follow the logical axes declared with them (:data:`sleepjax.models.params.PARAM_RULES`,
derived from the layout tables there); the streaming-inference state follows the axes its type
declares (:func:`sleepjax.stream_state.stream_state_logical_axes`). Both resolve through
:mod:`sleepjax.parallel.logical_axes`.
"""

from __future__ import annotations

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from sleepjax.models.params import PARAM_RULES
from sleepjax.parallel.logical_axes import logical_to_spec, tree_shardings
from sleepjax.parallel.mesh import validate_model_for_mesh

def params_shardings(abstract_params, mesh):
    """NamedShardings of a parameter tree (``{'params': ...}`` or the inner dict)."""
    return tree_shardings(abstract_params, mesh, PARAM_RULES)


def train_state_shardings(abstract_state, mesh, model_cfg=None):
    """NamedShardings for a whole TrainState (step, params, opt_state, rng).

    The optimiser state follows its parameter because optax nests a copy of the parameter
    tree under each moment (e.g. ``opt_state/0/mu/blocks_0/attn/wq``) and the rules match
    path suffixes; optax counters, the step and the PRNG key are replicated. Pass
    ``model_cfg`` to also check that heads divide ``mesh.model`` (clear error otherwise).
    """
    if model_cfg is not None:
        validate_model_for_mesh(model_cfg, mesh)
    return tree_shardings(abstract_state, mesh, PARAM_RULES)


def stream_state_partition_specs(abstract_stream_state, mesh):
    """PartitionSpecs of the streaming-inference state, from the axes it declares: fast weights
    and KV caches split batch over the data axes and heads over ``model``, so wake steps and
    sleeps on a mesh are the same per-shard computation as on one device."""
    from sleepjax.stream_state import stream_state_logical_axes
    from sleepjax.models.carry import LogicalAxes

    def spec(axes, leaf):
        shape = tuple(leaf.shape)
        return logical_to_spec(axes, shape, mesh, name="stream state") if shape else P()

    return jax.tree.map(spec, stream_state_logical_axes(abstract_stream_state),
                        abstract_stream_state, is_leaf=lambda x: isinstance(x, LogicalAxes))


def stream_state_shardings(abstract_stream_state, mesh):
    """NamedShardings for the streaming-inference state (fast weights, KV/conv caches)."""
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec),
                        stream_state_partition_specs(abstract_stream_state, mesh),
                        is_leaf=lambda x: isinstance(x, P))
