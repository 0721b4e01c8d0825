"""Shared fixtures: the tiny generated GGUF (fast) and the default real model (integration)."""
from __future__ import annotations

import os

import pytest
from tiny_model import write_tiny_gguf


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    """Head size 32, so q8_0/q4_0 caches (32-value blocks) work too."""
    return str(write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", n_embd=128))


@pytest.fixture(scope="session")
def real_model_path() -> str:
    """The default model; skipped outside CI when its packages are absent, an error in CI."""
    from seqkv_edge.errors import ModelNotInstalledError
    from seqkv_edge.models import default_model_path

    try:
        return default_model_path()
    except ModelNotInstalledError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"default model not installed: {exc}")
