"""Pure-JAX references the Pallas kernels are tested against and differentiated through.

Re-exported from sleepjax rather than copied, so that there is one definition of the math:
the float32 token-by-token scan (ground truth) and the chunked WY form (whose ``jax.vjp``
is the Pallas op's backward pass).
"""

from sleepjax.ops.gdr_chunked import gated_delta_rule_chunked
from sleepjax.ops.gdr_recurrent import gated_delta_rule_recurrent

__all__ = ["gated_delta_rule_chunked", "gated_delta_rule_recurrent"]
