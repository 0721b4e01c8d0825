"""The known models in tests: present on CI machines, skipped elsewhere when their packages are absent."""
from __future__ import annotations

import os

import pytest


def known_model_path(name: str) -> str:
    """A known model's GGUF path (``seqkv_edge.models``); the test is skipped outside CI when its packages are
    absent, an error in CI."""
    from seqkv_edge.errors import ModelNotInstalledError
    from seqkv_edge.models import model_path

    try:
        return model_path(name)
    except ModelNotInstalledError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"model {name} not installed: {exc}")
