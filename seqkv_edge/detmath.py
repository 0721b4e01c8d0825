"""The lossy decoder's float arithmetic, the same bits on every CPU (``native/detmath.h``).

Matrix products sum in a fixed order, one IEEE operation at a time (numpy's BLAS picks its kernel, and with it
the summation order, per CPU and thread count); RoPE angles come from basic float64 operations, not libm.
Encoder and decoder both compute through here wherever the decoder recomputes what the encoder predicted.

>>> import numpy as np
>>> x, w = np.ones((3, 4), np.float32), np.full((4, 2), 0.5, np.float32)
>>> matmul(x, w).tolist()
[[2.0, 2.0], [2.0, 2.0], [2.0, 2.0]]
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .native import require

__all__ = ["matmul", "per_head", "rope_angles"]

# Products of at least this many multiply-adds are split into row blocks computed in parallel threads: every output
# is summed exactly as in one call (rows are independent; blocks start on whole register tiles of every kernel, of 4
# or 8 rows), so the bits do not depend on the thread count.
_PARALLEL_MACS = 1 << 21
_TILE_ROWS = 8
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _forget_pool() -> None:
    """In a forked child: the pool's threads stayed in the parent, so the child starts its own."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _row_blocks(n_rows: int, macs: int) -> list[tuple[int, int]]:
    """(start, stop) row blocks for a product of ``macs`` multiply-adds: one per core when it pays."""
    n_blocks = min(os.cpu_count() or 1, n_rows // (8 * _TILE_ROWS), max(macs // _PARALLEL_MACS, 1))
    if n_blocks <= 1:
        return [(0, n_rows)]
    step = -(-n_rows // n_blocks // _TILE_ROWS) * _TILE_ROWS
    return [(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]


def _in_blocks(blocks: list[tuple[int, int]], fn) -> None:
    """``fn(start, stop)`` for each block: the first ones in the shared pool, the last in this thread."""
    global _pool
    if len(blocks) == 1:
        fn(*blocks[0])
        return
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max((os.cpu_count() or 1) - 1, 1), thread_name_prefix="detmath")
    futures = [_pool.submit(fn, *block) for block in blocks[:-1]]
    fn(*blocks[-1])
    for future in futures:
        future.result()


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def matmul(x: np.ndarray, w: np.ndarray, out: np.ndarray | None = None, accumulate: bool = False,
           split: bool = True) -> np.ndarray:
    """``x @ w`` (``out += x @ w`` with ``accumulate``) for float32 ``x`` [n, k] and ``w`` [k, m], each output summed
    over k in order. ``out`` (float32 [n, m], rows may be strided) receives the result. ``split`` False keeps it in
    the calling thread (same bits)."""
    ffi, lib = require()
    x, w = _f32(x), _f32(w)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
        raise ValueError(f"matmul: shapes {x.shape} and {w.shape} do not chain")
    if out is None:
        if accumulate:
            raise ValueError("matmul: accumulate needs out")
        out = np.empty((x.shape[0], w.shape[1]), np.float32)
    if out.dtype != np.float32 or out.shape != (x.shape[0], w.shape[1]) or out.strides[1] != 4:
        raise ValueError(f"matmul: out must be float32 {(x.shape[0], w.shape[1])} with contiguous rows")
    if x.shape[0] and w.shape[1]:
        base_x, base_w, base_out = ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", w), _row_pointer(ffi, out)
        out_stride = out.strides[0] // 4

        def rows(start: int, stop: int) -> None:
            lib.det_matmul(base_x + start * x.shape[1], stop - start, x.shape[1], x.shape[1], base_w, w.shape[1],
                           base_out + start * out_stride, out_stride, int(accumulate))

        _in_blocks(_row_blocks(x.shape[0], x.size * w.shape[1]) if split else [(0, x.shape[0])], rows)
    return out


def _row_pointer(ffi, out: np.ndarray):
    """A float pointer to ``out``'s first element (``out`` may be a strided column block of a larger array)."""
    return ffi.cast("float *", out.__array_interface__["data"][0])


def per_head(x: np.ndarray, matrices: np.ndarray, n_heads: int, split: bool = True) -> np.ndarray:
    """``x[:, head] @ matrices[head]`` for each head of ``x`` [n_cells, n_heads * head_dim]; ``split`` False keeps
    it in the calling thread (a caller already running beside other work leaves the shared threads to it)."""
    ffi, lib = require()
    x = _f32(x)
    out = np.empty(x.shape, np.float32)
    width = x.shape[1] // n_heads
    matrices = _f32(matrices)
    if matrices.shape != (n_heads, width, width):
        raise ValueError(f"per_head: {matrices.shape} matrices for {n_heads} heads of {width}")
    if not x.size:
        return out
    base_x, base_out = ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", out)
    heads = [ffi.from_buffer("float[]", matrices[h]) for h in range(n_heads)]
    n_ch = x.shape[1]

    def rows(start: int, stop: int) -> None:
        for h in range(n_heads):
            lib.det_matmul(base_x + start * n_ch + h * width, stop - start, width, n_ch, heads[h], width,
                           base_out + start * n_ch + h * width, n_ch, 0)

    _in_blocks(_row_blocks(x.shape[0], x.size * width) if split else [(0, x.shape[0])], rows)
    return out


def rope_angles(positions: np.ndarray, n_rot: int, freq_base: float, freq_scale: float):
    """(cos, sin) float32 [n_cells, n_rot // 2] of the RoPE angles ``pos * freq_scale * freq_base^(-2i / n_rot)``."""
    ffi, lib = require()
    if not (freq_base > 0 and n_rot >= 2):
        raise ValueError(f"rope_angles: freq_base {freq_base}, n_rot {n_rot}")
    pos = np.ascontiguousarray(positions, dtype=np.int32)
    half = n_rot // 2
    cos, sin = np.empty((len(pos), half), np.float32), np.empty((len(pos), half), np.float32)
    if len(pos):
        lib.det_rope_angles(ffi.from_buffer("int32_t[]", pos), len(pos), n_rot, float(freq_base), float(freq_scale),
                            ffi.from_buffer("float[]", cos), ffi.from_buffer("float[]", sin))
    return cos, sin
