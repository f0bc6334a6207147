"""Public entry point of the gated delta rule (the fast-weight update of a GDN layer).

The op lives entirely in ``pallas_kernels.gated_delta_rule`` (references, chunked XLA form,
Pallas kernels, dispatcher), which knows nothing of sleepjax. This adapter adds the one
thing only the project knows: where batch and heads live on the active mesh (its logical
axis rules), which the Pallas kernels need to wrap themselves in ``shard_map`` when traced
inputs on an Auto-axis mesh carry no sharding. See ``pallas_kernels.gated_delta_rule.api``
for the convention, layouts and arguments.
"""

from __future__ import annotations

from pallas_kernels.gated_delta_rule import api
from pallas_kernels.gated_delta_rule.api import IMPLS, validate_inputs

__all__ = ["IMPLS", "gated_delta_rule", "validate_inputs"]


def gated_delta_rule(q, k, v, g, beta, *, initial_state=None, scale=None, chunk_size=64,
                     impl="chunked"):
    """``api.gated_delta_rule`` with the Pallas kernels' mesh axes taken from the project's
    partition rules; returns ``(o [B,T,H,V], final_state [B,H,K,V] float32)``."""
    mesh_axes = None
    if impl == "pallas":
        from sleepjax.parallel.activations import activation_mesh_axes   # Pallas path only
        axes = (activation_mesh_axes("batch", q.shape[0]), activation_mesh_axes("heads", v.shape[2]))
        mesh_axes = None if axes == (None, None) else axes
    return api.gated_delta_rule(q, k, v, g, beta, initial_state=initial_state, scale=scale,
                                chunk_size=chunk_size, impl=impl, mesh_axes=mesh_axes)
