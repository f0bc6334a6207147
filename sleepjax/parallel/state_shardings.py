"""Shardings of the model's state trees: parameters, the whole TrainState, the streaming state.

Parameters follow the logical axes declared with them (:data:`sleepjax.models.params.PARAM_RULES`,
derived from the layout tables there); the streaming-inference state follows
:data:`STREAM_STATE_RULES`. Both resolve through :mod:`sleepjax.parallel.logical_axes`.
"""

from __future__ import annotations

from sleepjax.models.params import PARAM_RULES
from sleepjax.parallel.logical_axes import tree_shardings
from sleepjax.parallel.mesh import validate_model_for_mesh

# Streaming-inference state (``sleepjax.inference.StreamState``). Fast weights S [B, H, K, V]
# and the per-head KV caches are split batch-over-data, heads-over-model, so wake steps and
# sleeps on a mesh are the same per-shard computation as on one device. The short-conv caches
# of q, k, v ([B, W-1, H*D], heads-major channels) split on head boundaries like the
# projections that fill them.
STREAM_STATE_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"(^|/)fast_weights/[^/]+$", ("batch", "heads", "head_dim", "head_dim")),
    (r"(^|/)(kv_cache|prev_kv)/[^/]+/[01]$", ("batch", "length", "heads", "head_dim")),
    (r"(^|/)conv_cache/[^/]+/[qkv]$", ("batch", "length", "heads")),
    (r"(^|/)loop_input$", ("batch", "length", None)),
    (r".*", ("batch", ...)),   # anything else is batch-leading; scalars (position) are replicated
)


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


def stream_state_shardings(abstract_stream_state, mesh):
    """NamedShardings for the streaming-inference state (fast weights, KV/conv caches)."""
    return tree_shardings(abstract_stream_state, mesh, STREAM_STATE_RULES)
