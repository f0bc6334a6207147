"""Fixtures of the pretrained-checkpoint tests: tiny perturbed Qwen3.5 checkpoints on disk."""

from __future__ import annotations


import pytest

from tiny_qwen import CASES, checkpoint_builder


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """``checkpoint(case) -> (directory, transformers model)``, each saved once per session."""
    return checkpoint_builder(tmp_path_factory, CASES)
