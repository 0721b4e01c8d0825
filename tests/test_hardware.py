"""Model loading on every CPU: the AMX weight repack decision, its overrides, and a batched decode of the default
model with the defaults in a subprocess (a crash there is a failed test, not a dead test run)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from seqkv_edge import hardware
from seqkv_edge.hardware import (
    REPACK_ENV,
    build_has_amx,
    cpu_has_amx,
    model_loading,
    weight_repack_enabled,
)

SPR_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile amx_int8\n"
ZEN_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"


def test_cpu_and_build_detection():
    assert cpu_has_amx(SPR_FLAGS) and not cpu_has_amx(ZEN_FLAGS)
    assert not cpu_has_amx("model name\t: amx_int8 in a name only\n")
    assert build_has_amx(b"CPU : SSE3 = 1 | AVX512 = 1 | AMX_INT8 = 1 | REPACK = 1 |")
    assert not build_has_amx("CPU : SSE3 = 1 | AVX2 = 1 | REPACK = 1 |")


@pytest.mark.parametrize("setting,risk,expected", [("auto", True, False), ("auto", False, True), ("", True, False),
                                                   ("on", True, True), ("off", False, False), ("OFF", False, False)])
def test_repack_decision(monkeypatch, setting, risk, expected):
    monkeypatch.setenv(REPACK_ENV, setting)
    monkeypatch.setattr(hardware, "amx_repack_risk", lambda: risk)
    assert weight_repack_enabled() is expected
    assert weight_repack_enabled(True) is True and weight_repack_enabled(False) is False  # the argument wins


def test_bad_setting_is_refused(monkeypatch):
    monkeypatch.setenv(REPACK_ENV, "sometimes")
    with pytest.raises(ValueError, match=REPACK_ENV):
        weight_repack_enabled()


def test_model_loading_amends_the_default_params_only_inside():
    from llama_cpp import llama_cpp as lib

    assert lib.llama_model_default_params().use_extra_bufts
    with model_loading(weight_repack=False):
        assert not lib.llama_model_default_params().use_extra_bufts
    assert lib.llama_model_default_params().use_extra_bufts
    with model_loading(weight_repack=True):
        assert lib.llama_model_default_params().use_extra_bufts


def test_the_subclass_loads_without_repack_when_told(tiny_model_path):
    from seqkv_edge import Llama

    llm = Llama(model_path=tiny_model_path, n_ctx=64, verbose=False, weight_repack=False)
    assert not llm.model_params.use_extra_bufts and llm.weight_repack is False
    assert Llama(model_path=tiny_model_path, n_ctx=64, verbose=False, weight_repack=True).model_params.use_extra_bufts


BATCHED_DECODE = textwrap.dedent("""
    from seqkv_edge import Llama
    from seqkv_edge.hardware import amx_repack_risk
    from seqkv_edge.models import default_model_path

    llm = Llama(model_path=default_model_path(), n_ctx=512, n_threads=2, verbose=False)
    tokens = llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 8)
    llm.eval(tokens)  # one batch of more than one token: where the AMX repack crashes
    llm.eval([llm.sample(temp=0.0)])
    print("ok", len(tokens), "amx risk", amx_repack_risk(), "repack", llm.model_params.use_extra_bufts)
""")


@pytest.mark.real_model
def test_default_model_batched_decode_with_defaults_exits_cleanly(real_model_path, monkeypatch):
    monkeypatch.delenv(REPACK_ENV, raising=False)
    run = subprocess.run([sys.executable, "-c", BATCHED_DECODE], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-2000:]}"
    assert run.stdout.startswith("ok ")
    if "amx risk True" in run.stdout:
        assert "repack False" in run.stdout
