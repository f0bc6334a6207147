"""The gated delta rule, self-contained (imports nothing from sleepjax): pure-JAX references
(``reference``), the chunked XLA form with a hand-written backward (``xla``), Pallas kernels
for TPU and GPU in both directions (``pallas_tpu``, ``pallas_gpu``, joined by ``pallas``),
and one dispatcher over them (``api.gated_delta_rule``)."""

from pallas_kernels.gated_delta_rule.api import IMPLS, gated_delta_rule, validate_inputs
from pallas_kernels.gated_delta_rule.pallas import BACKENDS, BACKWARDS, gated_delta_rule_pallas

__all__ = ["BACKENDS", "BACKWARDS", "IMPLS", "gated_delta_rule", "gated_delta_rule_pallas", "validate_inputs"]
