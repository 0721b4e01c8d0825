"""Model loading that is safe on the CPU at hand: llama.cpp's AMX weight repack is switched off where it crashes.

llama-cpp-python builds llama.cpp with native CPU flags. On Intel CPUs with AMX (Sapphire Rapids and later) that
build repacks quantized weights into an "AMX" buffer at model load, and the first batched decode can crash in the
AMX matrix product (llama.cpp issue #20824). Every model seqkv_edge loads goes through :func:`model_loading`, which
loads without extra buffer types (``llama_model_params.use_extra_bufts = False``: no weight repack) when the CPU
reports AMX *and* the loaded llama.cpp build compiled it in; elsewhere the repack stays on (it pays on AVX2/ARM).

Force it either way with ``Llama(..., weight_repack=True|False)`` or, for the ``seqkv`` commands,
the environment variable ``SEQKV_WEIGHT_REPACK=on|off|auto``:

>>> weight_repack_enabled(False)
False
>>> weight_repack_enabled(True)
True
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from functools import lru_cache
from pathlib import Path

logger = logging.getLogger(__name__)

REPACK_ENV = "SEQKV_WEIGHT_REPACK"
_ON, _OFF = ("1", "on", "true", "yes"), ("0", "off", "false", "no")
_PATCH_LOCK = threading.RLock()

__all__ = ["REPACK_ENV", "amx_repack_risk", "build_has_amx", "cpu_has_amx", "load_plain_llama", "model_loading",
           "weight_repack_enabled"]


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    """True when the CPU reports AMX int8 tiles (Linux ``/proc/cpuinfo`` flag ``amx_int8``)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
    return any(line.startswith("flags") and "amx_int8" in line.split() for line in cpuinfo.splitlines())


def build_has_amx(system_info: bytes | str | None = None) -> bool:
    """True when the loaded llama.cpp build compiled ggml's AMX backend (``llama_print_system_info``)."""
    if system_info is None:
        import llama_cpp

        system_info = llama_cpp.llama_print_system_info()
    if isinstance(system_info, bytes):
        system_info = system_info.decode(errors="replace")
    return "AMX_INT8 = 1" in system_info


@lru_cache(maxsize=1)
def amx_repack_risk() -> bool:
    """This CPU and this llama.cpp build together repack weights for AMX at load (the crashing path)."""
    return cpu_has_amx() and build_has_amx()


def weight_repack_enabled(override: bool | None = None) -> bool:
    """Whether models load with llama.cpp's weight repack (extra buffer types).

    ``override`` (``Llama(weight_repack=...)``) wins; then ``$SEQKV_WEIGHT_REPACK`` (on, off, auto); auto turns
    the repack off only where :func:`amx_repack_risk` says the AMX repack would run.
    """
    if override is not None:
        return bool(override)
    setting = os.environ.get(REPACK_ENV, "auto").strip().lower()
    if setting in _ON:
        return True
    if setting in _OFF:
        return False
    if setting not in ("", "auto"):
        raise ValueError(f"{REPACK_ENV}={setting!r}: use on, off or auto")
    if amx_repack_risk():
        _log_amx_once()
        return False
    return True


@lru_cache(maxsize=1)
def _log_amx_once() -> None:
    logger.info("llama.cpp weight repack off: this CPU has AMX and the llama.cpp build repacks weights for it, "
                "which crashes on batched decodes (llama.cpp #20824); set %s=on to force it", REPACK_ENV)


@contextlib.contextmanager
def model_loading(weight_repack: bool | None = None):
    """Within the block, ``llama_cpp.Llama`` loads models with the weight repack :func:`weight_repack_enabled`
    decides (llama-cpp-python has no argument for it: its default model params are amended while the block runs)."""
    if weight_repack_enabled(weight_repack):
        yield
        return
    from llama_cpp import llama_cpp as lib

    with _PATCH_LOCK:
        original = lib.llama_model_default_params

        def params_without_repack():
            params = original()
            params.use_extra_bufts = False
            return params

        lib.llama_model_default_params = params_without_repack
        try:
            yield
        finally:
            lib.llama_model_default_params = original


def load_plain_llama(*args, weight_repack: bool | None = None, **kwargs):
    """A plain ``llama_cpp.Llama`` (baselines, scratch models) loaded through :func:`model_loading`."""
    import llama_cpp

    with model_loading(weight_repack):
        return llama_cpp.Llama(*args, **kwargs)
