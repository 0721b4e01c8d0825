"""Shared fixtures: the tiny generated GGUF (fast) and the default real model (integration)."""
from __future__ import annotations

import pytest
from known_models import known_model_path
from tiny_model import write_tiny_gguf


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    """Head size 32, so q8_0/q4_0 caches (32-value blocks) work too."""
    return str(write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", n_embd=128))


@pytest.fixture(scope="session")
def real_model_path() -> str:
    """The default model (see :func:`known_model_path`)."""
    from seqkv_edge.models import DEFAULT_MODEL

    return known_model_path(DEFAULT_MODEL)
