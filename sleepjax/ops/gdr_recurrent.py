"""The recurrent reference's one-token step, re-exported for the model's streaming step
(defined in ``pallas_kernels.gated_delta_rule.reference``)."""

from pallas_kernels.gated_delta_rule.reference import gated_delta_rule_recurrent, recurrent_step

__all__ = ["gated_delta_rule_recurrent", "recurrent_step"]
