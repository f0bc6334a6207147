"""Numerical ops: the gated delta rule (fast-weight update), implemented in the
self-contained ``pallas_kernels.gated_delta_rule`` package and exposed here."""

from sleepjax.ops.gated_delta_rule import IMPLS, gated_delta_rule

__all__ = ["IMPLS", "gated_delta_rule"]
