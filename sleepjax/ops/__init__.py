"""Numerical ops: the gated delta rule (fast-weight update) in recurrent, chunked and Pallas form."""

from sleepjax.ops.gated_delta_rule import IMPLS, gated_delta_rule

__all__ = ["IMPLS", "gated_delta_rule"]
