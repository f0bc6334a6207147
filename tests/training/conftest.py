"""Fixtures of the training tests."""

from __future__ import annotations

import pytest

from support.training import enable_compilation_cache


@pytest.fixture(scope="module")
def compilation_cache_dir(tmp_path_factory):
    """JAX's persistent compilation cache for one test module (runs of one config, and CLI
    subprocesses given ``--compilation_cache_dir``, compile once); undone afterwards."""
    directory = str(tmp_path_factory.mktemp("jax_cache"))
    undo = enable_compilation_cache(directory)
    yield directory
    undo()
