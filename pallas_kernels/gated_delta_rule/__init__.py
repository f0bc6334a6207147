"""Gated delta rule as Pallas kernels (TPU Mosaic and GPU Triton forward kernels, exact
backward by recomputation through the pure-JAX chunked form)."""

from pallas_kernels.gated_delta_rule.api import BACKENDS, gated_delta_rule_pallas

__all__ = ["BACKENDS", "gated_delta_rule_pallas"]
