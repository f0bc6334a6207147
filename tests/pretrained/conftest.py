"""Fixtures of the pretrained-checkpoint tests: tiny perturbed Qwen3.5 checkpoints on disk."""

from __future__ import annotations

import functools

import pytest

from tiny_qwen import CASES


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """``checkpoint(case) -> (directory, transformers model)``, each saved once per session."""

    @functools.lru_cache(maxsize=None)
    def build(case):
        model = CASES[case]()
        directory = tmp_path_factory.mktemp(case)
        model.save_pretrained(directory)
        return str(directory), model

    return build
