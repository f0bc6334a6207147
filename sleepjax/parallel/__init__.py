"""Partitioning tools beyond the rules in :mod:`sleepjax.partitioning` (HLO collective analysis)."""
