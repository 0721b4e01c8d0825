"""Segment coder: int32 indices of an [n_cells, n_channels] tensor in independent segments.

The stream (``native/segcode.h``) cuts the tensor into segments of ``SEGMENT_CELLS`` cells by
``SEGMENT_CHANNELS`` channels, each with its own static frequency table and ``LANES`` interleaved
rANS lanes, and a size table locating every segment; so segments code on any number of CPU threads
(or GPU threads, ``native/segcode_cuda.cu``) to the same bytes.

Format 2 (``format=2``) cuts segments of ``SEGMENT2_CELLS`` x ``SEGMENT_CHANNELS`` and codes each
channel with one static model fitted to the whole tensor, stored once in a table section that every
segment reads: the rate of per-channel models, segments still independent. :func:`decode` reads both
formats; :func:`cost` tells a format-2 stream's size without coding it.

>>> import numpy as np
>>> q = np.arange(-300, 300, dtype=np.int32).reshape(20, 30)
>>> data = encode(q, threads=2)
>>> bool((decode(data, 20, 30) == q).all())
True
>>> bool((decode(encode(q, format=2), 20, 30) == q).all())
True
"""
from __future__ import annotations

import os
import threading

import numpy as np

from ..errors import CorruptDataError
from ..native import check, require

__all__ = [
    "SEGMENT_CELLS",
    "model_tables",
    "stream_tables",
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
    "fit_models",
    "cost",
    "cost_sample",
    "FORMATS",
]

SEGMENT_CELLS = 256
SEGMENT_CHANNELS = 64
LANES = 32
MAX_ABS = 32767
SEGMENT2_CELLS = 2048
FORMATS = (1, 2)


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


def _format(format: int) -> int:
    if format not in FORMATS:
        raise ValueError(f"segment coder format {format}: this version writes {FORMATS}")
    return format


def encode(q: np.ndarray, threads: int | None = None, format: int = 1) -> bytes:
    """Code an int32 [n_cells, n_channels] matrix of indices in [-MAX_ABS, MAX_ABS]."""
    ffi, lib = require()
    q = _matrix(q, np.int32, "q")
    n_cells, n_channels = q.shape
    doing = f"segment-coding a {n_cells} x {n_channels} index matrix"
    bound_fn, encode_fn = ((lib.segc_encode_bound, lib.segc_encode) if _format(format) == 1
                           else (lib.segc2_encode_bound, lib.segc2_encode))
    bound = _check(bound_fn(n_cells, n_channels), doing)
    out = np.empty(bound, dtype=np.uint8)  # scratch slots: untouched pages are never committed
    n = _check(encode_fn(ffi.cast("const int32_t *", ffi.from_buffer(q)), n_cells, n_channels,
                         ffi.from_buffer(out), bound, _threads(threads)), doing)
    return out[:n].tobytes()


def encode_f32(x: np.ndarray, inv_step, threads: int | None = None, format: int = 1, step=None,
               out: np.ndarray | None = None) -> bytes:
    """Quantize float32 x (index = round(x * inv_step[channel]), ties away from zero) and code it. Format 2 with
    ``step`` and ``out`` (float32, x's shape): ``out`` also receives ``index * step[channel]`` (what
    :func:`decode_f32` gives back), in the same pass."""
    ffi, lib = require()
    x = _matrix(x, np.float32, "x")
    n_cells, n_channels = x.shape
    inv_step = _per_channel(inv_step, n_channels, "inv_step")
    doing = f"segment-coding a {n_cells} x {n_channels} float32 matrix"
    if (step is None) != (out is None) or (out is not None and _format(format) != 2):
        raise ValueError("encode_f32: step and out go together, with format 2")
    x_ptr, inv_ptr = ffi.cast("const float *", ffi.from_buffer(x)), ffi.cast("const float *", ffi.from_buffer(inv_step))
    if _format(format) == 1:
        bound = _check(lib.segc_encode_bound(n_cells, n_channels), doing)
        buf = _scratch(bound)
        n = _check(lib.segc_encode_f32(x_ptr, inv_ptr, n_cells, n_channels, ffi.from_buffer(buf), bound,
                                       _threads(threads)), doing)
        return buf[:n].tobytes()
    step_ptr, rec_ptr = ffi.NULL, ffi.NULL
    if out is not None:
        step = _per_channel(step, n_channels, "step")
        out = _decode_out(out, n_cells, n_channels, np.float32)
        step_ptr = ffi.cast("const float *", ffi.from_buffer(step))
        rec_ptr = ffi.cast("float *", ffi.from_buffer(out, require_writable=True))
    bound = _check(lib.segc2_encode_bound(n_cells, n_channels), doing)
    buf = _scratch(bound)
    n = _check(lib.segc2_encode_f32(x_ptr, inv_ptr, n_cells, n_channels, ffi.from_buffer(buf), bound,
                                    _threads(threads), step_ptr, rec_ptr), doing)
    return buf[:n].tobytes()


_thread_scratch = threading.local()


def _scratch(n_bytes: int) -> np.ndarray:
    """The calling thread's reusable encoder buffer of at least ``n_bytes`` (its slots are scratch)."""
    buf = getattr(_thread_scratch, "buf", None)
    if buf is None or buf.size < n_bytes:
        buf = _thread_scratch.buf = np.empty(n_bytes, np.uint8)
    return buf


def _decode_out(out, n_cells: int, n_channels: int, dtype) -> np.ndarray:
    if out is None:
        return np.empty((n_cells, n_channels), dtype=dtype)
    if out.dtype != dtype or out.shape != (n_cells, n_channels) or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {np.dtype(dtype).name} array of shape ({n_cells}, {n_channels})")
    return out


def _version(src, n_cells: int, n_channels: int) -> int:
    ffi, lib = require()
    got_cells, got_channels = ffi.new("uint32_t *"), ffi.new("uint32_t *")
    return _check(lib.segc_stream_info(src, len(src), got_cells, got_channels),
                  f"decoding a {n_cells} x {n_channels} segment-coded matrix")


def decode(buf, n_cells: int, n_channels: int, threads: int | None = None, out: np.ndarray | None = None
           ) -> np.ndarray:
    """Decode a stream (format 1 or 2) of an [n_cells, n_channels] matrix (the shape the caller expects) to int32."""
    ffi, lib = require()
    out = _decode_out(out, n_cells, n_channels, np.int32)
    with ffi.from_buffer(buf) as src:  # released before an error leaves the frame
        fn = lib.segc_decode if _version(src, n_cells, n_channels) == 1 else lib.segc2_decode
        _check(fn(src, len(src), n_cells, n_channels,
                  ffi.cast("int32_t *", ffi.from_buffer(out, require_writable=True)), _threads(threads)),
               f"decoding a {n_cells} x {n_channels} segment-coded matrix")
        return out


def decode_f32(buf, n_cells: int, n_channels: int, step, threads: int | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
    """Decode and dequantize: x = index * step[channel] (one float32 multiply)."""
    ffi, lib = require()
    out = _decode_out(out, n_cells, n_channels, np.float32)
    step = _per_channel(step, n_channels, "step")
    with ffi.from_buffer(buf) as src:  # released before an error leaves the frame
        fn = lib.segc_decode_f32 if _version(src, n_cells, n_channels) == 1 else lib.segc2_decode_f32
        _check(fn(src, len(src), n_cells, n_channels, ffi.cast("const float *", ffi.from_buffer(step)),
                  ffi.cast("float *", ffi.from_buffer(out, require_writable=True)), _threads(threads)),
               f"decoding a {n_cells} x {n_channels} segment-coded float32 matrix")
        return out


def fit_models(q: np.ndarray, threads: int | None = None) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Format 2's per-channel models fitted to int32 ``q`` as :func:`encode` fits them, for a coder of the segments
    elsewhere (``segcode_wgpu``): (the stream's head, what precedes its size table; each channel's ``k``; its
    logistic codes ``u``, shape [n_channels, 3])."""
    ffi, lib = require()
    q = _matrix(q, np.int32, "q")
    n_cells, n_channels = q.shape
    doing = f"fitting the format-2 models of a {n_cells} x {n_channels} index matrix"
    head = np.empty(_check(lib.segc2_head_bound(n_channels), doing), np.uint8)
    params = np.empty((n_channels, 4), np.uint32)
    n = _check(lib.segc2_fit_models(ffi.cast("const int32_t *", ffi.from_buffer(q)), n_cells, n_channels,
                                    ffi.cast("uint32_t *", ffi.from_buffer(params, require_writable=True)),
                                    ffi.from_buffer(head, require_writable=True), head.size, _threads(threads)), doing)
    return head[:n].tobytes(), params[:, 0].astype(np.int64), params[:, 1:].astype(np.int64)


def model_tables(k: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Each channel's coding table as the WGSL shaders read it (uint32 [n_channels, SEGC2_SHADER_WORDS]) from
    :func:`fit_models`' ``k`` and ``u``: the C core's own arithmetic (``segc2_model``)."""
    ffi, lib = require()
    params = np.ascontiguousarray(np.column_stack([k, u]), np.uint32)
    tables = np.empty((len(params), lib.SEGC2_SHADER_WORDS), np.uint32)
    _check(lib.segc2_model_tables(ffi.cast("const uint32_t *", ffi.from_buffer(params)), len(params),
                                  ffi.cast("uint32_t *", ffi.from_buffer(tables, require_writable=True))),
           "building the shader tables of fitted models")
    return tables


def stream_tables(buf, n_cells: int, n_channels: int) -> np.ndarray:
    """The coding tables (as :func:`model_tables`) of a format-2 stream's models, the stream checked as a decoder
    checks it (``CorruptDataError`` / ``ModelMismatchError``)."""
    ffi, lib = require()
    tables = np.empty((n_channels, lib.SEGC2_SHADER_WORDS), np.uint32)
    with ffi.from_buffer(buf) as src:  # released before an error leaves the frame
        _check(lib.segc2_stream_tables(src, len(src), n_cells, n_channels,
                                       ffi.cast("uint32_t *", ffi.from_buffer(tables, require_writable=True))),
               f"reading the models of a {n_cells} x {n_channels} segment-coded stream")
    return tables


def cost(x: np.ndarray, inv_step, row_every: int = 1) -> float:
    """Bits a format-2 stream of ``x`` quantized with ``inv_step`` takes, estimated from every ``row_every``-th row
    (the models fitted to those rows' statistics, without the encoder's refinement; nothing is coded)."""
    ffi, lib = require()
    x = _matrix(x, np.float32, "x")
    inv_step = _per_channel(inv_step, x.shape[1], "inv_step")
    return float(lib.segc2_cost(ffi.cast("const float *", ffi.from_buffer(x)), x.shape[0], x.shape[1],
                                ffi.cast("const float *", ffi.from_buffer(inv_step)), max(1, int(row_every))))


def cost_sample(sample: np.ndarray, inv_step, n_rows: int) -> float:
    """Bits a format-2 stream of ``n_rows`` rows takes, estimated from ``sample`` (some of its rows)."""
    ffi, lib = require()
    sample = _matrix(sample, np.float32, "sample")
    inv_step = _per_channel(inv_step, sample.shape[1], "inv_step")
    return float(lib.segc2_cost_sample(ffi.cast("const float *", ffi.from_buffer(sample)), sample.shape[0],
                                       sample.shape[1], ffi.cast("const float *", ffi.from_buffer(inv_step)),
                                       int(n_rows)))


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
    with ffi.from_buffer(buf) as src:  # released before an error leaves the frame
        n_cells, n_channels = ffi.new("uint32_t *"), ffi.new("uint32_t *")
        _check(lib.segc_stream_info(src, len(src), n_cells, n_channels), "reading a segment-coded stream's header")
        return int(n_cells[0]), int(n_channels[0])


def segment_offsets(buf, n_cells: int, n_channels: int) -> np.ndarray:
    """Byte offsets of every segment body (n_segments + 1 entries, the last one the stream's size)."""
    ffi, lib = require()
    with ffi.from_buffer(buf) as src:  # released before an error leaves the frame
        v1 = _version(src, n_cells, n_channels) == 1
        n_seg = _check((lib.segc_segment_count if v1 else lib.segc2_segment_count)(n_cells, n_channels),
                       "counting segments")
        offsets = np.empty(n_seg + 1, dtype=np.uint64)
        find = lib.segc_segment_offsets if v1 else lib.segc2_segment_offsets
        _check(find(src, len(src), n_cells, n_channels,
                    ffi.cast("uint64_t *", ffi.from_buffer(offsets, require_writable=True))),
               "reading a segment-coded stream's size table")
        return offsets
