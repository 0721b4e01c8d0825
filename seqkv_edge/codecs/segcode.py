"""Segment coder: int32 indices of an [n_cells, n_channels] tensor in independent segments.

The stream (``native/segcode.h``) cuts the tensor into segments of ``SEGMENT_CELLS`` cells by
``SEGMENT_CHANNELS`` channels, each with its own static frequency table and ``LANES`` interleaved
rANS lanes, and a size table locating every segment; so segments code on any number of CPU threads
(or GPU threads, ``native/segcode_cuda.cu``) to the same bytes.

>>> import numpy as np
>>> q = np.arange(-300, 300, dtype=np.int32).reshape(20, 30)
>>> data = encode(q, threads=2)
>>> bool((decode(data, 20, 30) == q).all())
True
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import CorruptDataError
from ..native import check, require

__all__ = [
    "SEGMENT_CELLS",
    "SEGMENT_CHANNELS",
    "LANES",
    "MAX_ABS",
    "encode",
    "encode_f32",
    "decode",
    "decode_f32",
    "quantize",
    "dequantize",
    "stream_info",
    "segment_offsets",
]

SEGMENT_CELLS = 256
SEGMENT_CHANNELS = 64
LANES = 32
MAX_ABS = 32767


def _threads(threads: int | None) -> int:
    return max(1, int(threads if threads is not None else (os.cpu_count() or 1)))


def _check(rc: int, doing: str) -> int:
    """``native.check`` with what the segment coder's codes mean."""
    _, lib = require()
    return check(rc, doing, {
        lib.SKV_ERR_UNSUPPORTED: (ValueError, f"an index is outside +-{MAX_ABS}; quantize with a coarser step"),
        lib.SKV_ERR_ARGUMENT: (ValueError, "empty tensor or missing buffer"),
        lib.SKV_ERR_CORRUPT: (CorruptDataError, "the stream is truncated or damaged"),
        lib.SKV_ERR_MISMATCH: (CorruptDataError, "the stream holds a tensor of another shape"),
    })


def _matrix(a: np.ndarray, dtype, name: str) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=dtype)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1 or max(a.shape) >= 2**32:
        raise ValueError(f"{name} must be a non-empty [n_cells, n_channels] matrix, got shape {a.shape}")
    return a


def _per_channel(v, n_channels: int, name: str) -> np.ndarray:
    v = np.ascontiguousarray(v, dtype=np.float32)
    if v.shape != (n_channels,):
        raise ValueError(f"{name} must hold one value per channel ({n_channels}), got shape {v.shape}")
    return v


def encode(q: np.ndarray, threads: int | None = None) -> bytes:
    """Code an int32 [n_cells, n_channels] matrix of indices in [-MAX_ABS, MAX_ABS]."""
    ffi, lib = require()
    q = _matrix(q, np.int32, "q")
    n_cells, n_channels = q.shape
    doing = f"segment-coding a {n_cells} x {n_channels} index matrix"
    bound = _check(lib.segc_encode_bound(n_cells, n_channels), doing)
    out = np.empty(bound, dtype=np.uint8)  # scratch slots: untouched pages are never committed
    n = _check(lib.segc_encode(ffi.cast("const int32_t *", ffi.from_buffer(q)), n_cells, n_channels,
                               ffi.from_buffer(out), bound, _threads(threads)), doing)
    return out[:n].tobytes()


def encode_f32(x: np.ndarray, inv_step, threads: int | None = None) -> bytes:
    """Quantize float32 x (index = round(x * inv_step[channel]), ties away from zero) and code it."""
    ffi, lib = require()
    x = _matrix(x, np.float32, "x")
    n_cells, n_channels = x.shape
    inv_step = _per_channel(inv_step, n_channels, "inv_step")
    doing = f"segment-coding a {n_cells} x {n_channels} float32 matrix"
    bound = _check(lib.segc_encode_bound(n_cells, n_channels), doing)
    out = np.empty(bound, dtype=np.uint8)
    n = _check(lib.segc_encode_f32(ffi.cast("const float *", ffi.from_buffer(x)),
                                   ffi.cast("const float *", ffi.from_buffer(inv_step)), n_cells, n_channels,
                                   ffi.from_buffer(out), bound, _threads(threads)), doing)
    return out[:n].tobytes()


def _decode_out(out, n_cells: int, n_channels: int, dtype) -> np.ndarray:
    if out is None:
        return np.empty((n_cells, n_channels), dtype=dtype)
    if out.dtype != dtype or out.shape != (n_cells, n_channels) or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {np.dtype(dtype).name} array of shape ({n_cells}, {n_channels})")
    return out


def decode(buf, n_cells: int, n_channels: int, threads: int | None = None, out: np.ndarray | None = None
           ) -> np.ndarray:
    """Decode a stream of an [n_cells, n_channels] matrix (the shape the caller expects) to int32."""
    ffi, lib = require()
    out = _decode_out(out, n_cells, n_channels, np.int32)
    src = ffi.from_buffer(buf)
    _check(lib.segc_decode(src, len(src), n_cells, n_channels,
                           ffi.cast("int32_t *", ffi.from_buffer(out, require_writable=True)), _threads(threads)),
           f"decoding a {n_cells} x {n_channels} segment-coded matrix")
    return out


def decode_f32(buf, n_cells: int, n_channels: int, step, threads: int | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
    """Decode and dequantize: x = index * step[channel] (one float32 multiply)."""
    ffi, lib = require()
    out = _decode_out(out, n_cells, n_channels, np.float32)
    step = _per_channel(step, n_channels, "step")
    src = ffi.from_buffer(buf)
    _check(lib.segc_decode_f32(src, len(src), n_cells, n_channels, ffi.cast("const float *", ffi.from_buffer(step)),
                               ffi.cast("float *", ffi.from_buffer(out, require_writable=True)), _threads(threads)),
           f"decoding a {n_cells} x {n_channels} segment-coded float32 matrix")
    return out


def quantize(x: np.ndarray, inv_step) -> np.ndarray:
    """Indices round(x * inv_step[channel]) (ties away from zero), clamped to +-MAX_ABS; NaN -> 0."""
    ffi, lib = require()
    x = _matrix(x, np.float32, "x")
    inv_step = _per_channel(inv_step, x.shape[1], "inv_step")
    q = np.empty(x.shape, dtype=np.int32)
    _check(lib.segc_quantize(ffi.cast("const float *", ffi.from_buffer(x)),
                             ffi.cast("const float *", ffi.from_buffer(inv_step)), x.shape[0], x.shape[1],
                             ffi.cast("int32_t *", ffi.from_buffer(q, require_writable=True))), "quantizing")
    return q


def dequantize(q: np.ndarray, step) -> np.ndarray:
    """Values q * step[channel] in float32."""
    ffi, lib = require()
    q = _matrix(q, np.int32, "q")
    step = _per_channel(step, q.shape[1], "step")
    x = np.empty(q.shape, dtype=np.float32)
    _check(lib.segc_dequantize(ffi.cast("const int32_t *", ffi.from_buffer(q)),
                               ffi.cast("const float *", ffi.from_buffer(step)), q.shape[0], q.shape[1],
                               ffi.cast("float *", ffi.from_buffer(x, require_writable=True))), "dequantizing")
    return x


def stream_info(buf) -> tuple[int, int]:
    """(n_cells, n_channels) from a stream's header."""
    ffi, lib = require()
    src = ffi.from_buffer(buf)
    n_cells, n_channels = ffi.new("uint32_t *"), ffi.new("uint32_t *")
    _check(lib.segc_stream_info(src, len(src), n_cells, n_channels), "reading a segment-coded stream's header")
    return int(n_cells[0]), int(n_channels[0])


def segment_offsets(buf, n_cells: int, n_channels: int) -> np.ndarray:
    """Byte offsets of every segment body (n_segments + 1 entries, the last one the stream's size)."""
    ffi, lib = require()
    src = ffi.from_buffer(buf)
    n_seg = _check(lib.segc_segment_count(n_cells, n_channels), "counting segments")
    offsets = np.empty(n_seg + 1, dtype=np.uint64)
    _check(lib.segc_segment_offsets(src, len(src), n_cells, n_channels,
                                    ffi.cast("uint64_t *", ffi.from_buffer(offsets, require_writable=True))),
           "reading a segment-coded stream's size table")
    return offsets
