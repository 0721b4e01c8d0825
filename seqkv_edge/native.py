"""Thin loader and wrappers of the native core ``seqkv_edge._native`` (cffi, API mode).

The extension is compiled from ``native/*.c`` by ``pip install -e .`` (``setup.py`` declares it as
a cffi module). Calls into it release the GIL, so threads can code tensors in parallel.

This module wraps the lossless KV codec (``native/kvcodec.h``): buffers enter C through
``ffi.from_buffer`` without copies, every return code is checked, and each failure raises one
exception saying what was being done.
"""
from __future__ import annotations

import threading

import numpy as np

from .errors import CorruptDataError, SeqKVError, UnsupportedStateError

try:
    from ._native import ffi, lib
except ImportError as exc:  # pragma: no cover - only without a build
    ffi = lib = None
    _IMPORT_ERROR: Exception | None = exc
else:
    _IMPORT_ERROR = None

__all__ = [
    "available",
    "check",
    "require",
    "KVWorkspace",
    "kv_row_bytes",
    "kv_encode",
    "kv_decode",
    "kv_stream_info",
    "kv_stream_size",
]


def available() -> bool:
    """True when the native extension is built and importable."""
    return lib is not None


def require():
    """(ffi, lib) of the native core, or SeqKVError saying how to build it."""
    if lib is None:
        raise SeqKVError(
            f"the native core seqkv_edge._native is not built ({_IMPORT_ERROR}); "
            "build it with: pip install -e . --no-deps --no-build-isolation"
        )
    return ffi, lib


def _meanings(native) -> dict:
    """The native core's error codes (native/status.h) and what each means to a caller."""
    return {
        native.SKV_ERR_ARGUMENT: (ValueError, "the sizes, shape or values given do not fit"),
        native.SKV_ERR_UNSUPPORTED: (UnsupportedStateError, "a type, layout or value range this coder does not handle"),
        native.SKV_ERR_MEMORY: (MemoryError, "out of memory"),
        native.SKV_ERR_CORRUPT: (CorruptDataError, "the stream is truncated, damaged or fails its checksum"),
        native.SKV_ERR_MISMATCH: (CorruptDataError, "the stream holds another type, layout or shape than the one "
                                                    "asked for"),
        native.SKV_ERR_CAPACITY: (SeqKVError, "the output buffer is too small"),
        native.SKV_ERR_THREAD: (SeqKVError, "a worker thread could not be started"),
        native.SKV_ERR_DEVICE: (SeqKVError, "a GPU runtime call failed"),
    }


def check(rc: int, doing: str, meanings: dict | None = None) -> int:
    """``rc`` when the native call succeeded (a count, or SKV_OK); otherwise the exception its negative code means,
    saying what was being done. ``meanings`` (code -> (exception class, message)) overrides for one caller.

    >>> check(5, "coding")
    5
    """
    rc = int(rc)
    if rc >= 0:
        return rc
    _, native = require()
    error, meaning = {**_meanings(native), **(meanings or {})}.get(rc, (SeqKVError, f"native error code {rc}"))
    raise error(f"{doing}: {meaning}")


class KVWorkspace:
    """Native per-thread state (cached context tables, scratch buffers); one thread at a time."""

    def __init__(self):
        ffi_, native = require()
        handle = native.kvc_workspace_new()
        if handle == ffi_.NULL:
            raise MemoryError("allocating a kv_lossless workspace: out of memory")
        self.handle = ffi_.gc(handle, native.kvc_workspace_free)


_thread_state = threading.local()


def thread_workspace() -> KVWorkspace:
    """The calling thread's workspace (created on first use, kept for the thread's life)."""
    ws = getattr(_thread_state, "kv_workspace", None)
    if ws is None:
        ws = _thread_state.kv_workspace = KVWorkspace()
    return ws


def kv_row_bytes(ggml_type: int, n_channels: int) -> int:
    """Bytes of one token-major row of n_channels elements."""
    _, native = require()
    return check(native.kvc_row_bytes(int(ggml_type), int(n_channels)),
                 f"sizing a row of {n_channels} channels of ggml type {ggml_type}")


def kv_encode(data: np.ndarray, ggml_type: int, token_major: bool, n_channels: int, pair_offset: int = -1,
              workspace: KVWorkspace | None = None) -> bytes:
    """Code a C-contiguous uint8 tensor; returns the self-delimiting stream."""
    ffi_, native = require()
    doing = f"coding a ggml type {ggml_type} tensor of {data.nbytes} bytes"
    bound = check(native.kvc_encode_bound(ggml_type, n_channels, data.nbytes), doing)
    out = bytearray(bound)
    ws = (workspace or thread_workspace()).handle
    with ffi_.from_buffer(data) as src, ffi_.from_buffer(out) as dst:  # exports released before any raise
        n = native.kvc_encode(src, data.nbytes, ggml_type, int(token_major), n_channels, pair_offset, dst, bound, ws)
    n = check(n, doing)
    return bytes(memoryview(out)[:n])


def kv_decode(buf, ggml_type: int, token_major: bool, n_channels: int, out: np.ndarray,
              workspace: KVWorkspace | None = None) -> np.ndarray:
    """Decode a stream into out (a preallocated, C-contiguous, writable uint8 array)."""
    ffi_, native = require()
    ws = (workspace or thread_workspace()).handle
    with ffi_.from_buffer(buf) as src, ffi_.from_buffer(out, require_writable=True) as dst:
        rc = native.kvc_decode(src, len(src), ggml_type, int(token_major), n_channels, dst, out.nbytes, ws)
    check(rc, f"decoding a ggml type {ggml_type} tensor of {out.nbytes} bytes")
    return out


def kv_stream_info(buf) -> tuple[int, bool, int, int]:
    """(ggml_type, token_major, n_channels, n_tokens) from a stream's header."""
    ffi_, native = require()
    typ, tm = ffi_.new("int *"), ffi_.new("int *")
    n_ch, n_tok = ffi_.new("int64_t *"), ffi_.new("int64_t *")
    with ffi_.from_buffer(buf) as src:
        rc = native.kvc_stream_info(src, len(src), typ, tm, n_ch, n_tok)
    check(rc, "reading a kv_lossless stream header")
    return int(typ[0]), bool(tm[0]), int(n_ch[0]), int(n_tok[0])


def kv_stream_size(buf) -> int:
    """Total size of the stream at the start of buf (streams are self-delimiting)."""
    ffi_, native = require()
    with ffi_.from_buffer(buf) as src:
        n = native.kvc_stream_size(src, len(src))
    return check(n, "reading a kv_lossless stream header")
