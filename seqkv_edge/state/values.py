"""KV tensor values in and out of llama.cpp's cache types (f16, bf16, f32, q8_0, q4_0), for the lossy tier.

``tensor_values`` reads a state tensor as float32 ``[n_cells, n_channels]`` (quantized types dequantized, and
un-rotated where llama.cpp stores them after a Hadamard rotation); ``store_values`` writes such values back in
the tensor's own type. f16 conversion runs in the native core (``native/half.c``).
"""
from __future__ import annotations

import math

import numpy as np

from ..detmath import matmul
from ..errors import UnsupportedStateError
from ..native import require


def _hadamard(n: int) -> np.ndarray:
    h = np.ones((1, 1), dtype=np.float32)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.float32(math.sqrt(n))


def _rotation_size(tensor, head_dim: int | None) -> int:
    """llama.cpp stores quantized K/V after a normalised Hadamard rotation (measured on 0.3.36: head 64 ->
    64 for K and V; head 128 -> 128 for K, 64 for V; head 32 -> none). A head size that does not divide the
    tensor's channels (rope parameters of another model, or damaged) is refused before anything is sized by it."""
    if not head_dim or head_dim % 64:
        return 0
    if head_dim > tensor.n_channels or tensor.n_channels % head_dim:
        raise UnsupportedStateError(f"{tensor.name}: a head size of {head_dim} does not divide its "
                                    f"{tensor.n_channels} channels")
    return head_dim if tensor.kind == "k" and head_dim & (head_dim - 1) == 0 else 64


def rope_head_dim(rope: dict | None, kind: str) -> int | None:
    """The K or V head size from ``rope_params``, or None."""
    return None if not rope else rope.get("head_dim_k" if kind == "k" else "head_dim_v")


def tensor_values(tensor, rope: dict | None = None) -> np.ndarray:
    """A tensor's values as float32 ``[n_cells, n_channels]`` (token-major), quantized types dequantized."""
    name, n_cells, n_ch = tensor.ggml_type.name, tensor.n_cells, tensor.n_channels
    raw = tensor.data
    if name in ("f16", "bf16", "f32"):
        if name == "f16":
            x = _f16_to_f32(raw)
        elif name == "bf16":
            x = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            x = raw.view(np.float32).astype(np.float32)
        x = x.reshape(n_ch, n_cells).T if tensor.transposed else x.reshape(n_cells, n_ch)
        return np.ascontiguousarray(x)
    if name not in ("q8_0", "q4_0"):
        raise UnsupportedStateError(f"{tensor.name}: the lossy KV codec reads f16, bf16, f32, q8_0 and q4_0 "
                                    f"caches, not {name}")
    blocks = raw.reshape(n_cells, n_ch // 32, tensor.element_bytes)
    d = blocks[..., :2].copy().view(np.float16).astype(np.float32)
    if name == "q8_0":
        q = blocks[..., 2:].view(np.int8).astype(np.float32)
    else:
        qs = blocks[..., 2:]
        q = np.concatenate([qs & 15, qs >> 4], axis=-1).astype(np.float32) - 8.0
    x = (q * d).reshape(n_cells, n_ch)
    rot = _rotation_size(tensor, rope_head_dim(rope, tensor.kind))
    if rot:
        x = matmul(x.reshape(-1, rot), _hadamard(rot)).reshape(n_cells, n_ch)
    return np.ascontiguousarray(x, dtype=np.float32)


def _f16_to_f32(raw: np.ndarray) -> np.ndarray:
    ffi, lib = require()
    src = np.ascontiguousarray(raw).view(np.uint16).reshape(-1)
    out = np.empty(src.size, np.float32)
    lib.half_f16_to_f32(ffi.from_buffer("uint16_t[]", src), src.size, ffi.from_buffer("float[]", out))
    return out


def _f32_to_f16(x: np.ndarray) -> np.ndarray:
    ffi, lib = require()
    src = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(src.shape, np.float16)
    lib.half_f32_to_f16(ffi.from_buffer("float[]", src), src.size, ffi.from_buffer("uint16_t[]", out))
    return out


def _quantize_q8_0(x: np.ndarray) -> np.ndarray:
    b = x.reshape(x.shape[0], -1, 32)
    d = np.abs(b).max(axis=-1, keepdims=True) / np.float32(127)
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
    q = np.round(b * inv).astype(np.int8)
    out = np.empty(b.shape[:2] + (34,), np.uint8)
    out[..., :2] = d.astype(np.float16).view(np.uint8).reshape(b.shape[:2] + (2,))
    out[..., 2:] = q.view(np.uint8)
    return out.reshape(x.shape[0], -1)


def _quantize_q4_0(x: np.ndarray) -> np.ndarray:
    b = x.reshape(x.shape[0], -1, 32)
    idx = np.abs(b).argmax(axis=-1)[..., None]
    d = np.take_along_axis(b, idx, axis=-1) / np.float32(-8)
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    q = np.minimum(15, np.trunc(b * inv + np.float32(8.5)).astype(np.int8)).astype(np.uint8)
    out = np.empty(b.shape[:2] + (18,), np.uint8)
    out[..., :2] = d.astype(np.float16).view(np.uint8).reshape(b.shape[:2] + (2,))
    out[..., 2:] = q[..., :16] | (q[..., 16:] << 4)
    return out.reshape(x.shape[0], -1)


def store_values(tensor, x: np.ndarray, rope: dict | None = None) -> None:
    """Write float32 ``[n_cells, n_channels]`` values into ``tensor.data`` in the tensor's own cache type."""
    name = tensor.ggml_type.name
    if name == "f16":
        raw = _f32_to_f16(x).view(np.uint8)
    elif name == "bf16":
        bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
        rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16  # round to nearest even
        raw = np.where(np.isnan(x), (bits >> 16) | np.uint32(0x40), rounded).astype(np.uint16).view(np.uint8)
    elif name == "f32":
        raw = x.astype(np.float32).view(np.uint8)
    elif name in ("q8_0", "q4_0"):
        rot = _rotation_size(tensor, rope_head_dim(rope, tensor.kind))
        if rot:
            x = matmul(np.ascontiguousarray(x, dtype=np.float32).reshape(-1, rot), _hadamard(rot)).reshape(x.shape)
        raw = (_quantize_q8_0 if name == "q8_0" else _quantize_q4_0)(np.ascontiguousarray(x, dtype=np.float32))
    else:
        raise UnsupportedStateError(f"{tensor.name}: the lossy KV codec writes f16, bf16, f32, q8_0 and q4_0 "
                                    f"caches, not {name}")
    if tensor.transposed:  # channel-major: one strided copy, element by element where the type allows it
        element = {2: np.uint16, 4: np.uint32}.get(raw.size // max(tensor.n_cells * tensor.n_channels, 1))
        if element is not None and tensor.data.flags.c_contiguous:
            cells = raw.reshape(-1).view(element).reshape(tensor.n_cells, tensor.n_channels)
            tensor.data.reshape(-1).view(element).reshape(tensor.n_channels, tensor.n_cells)[...] = cells.T
            return
        raw = np.ascontiguousarray(raw.reshape(tensor.n_cells, tensor.n_channels, -1).transpose(1, 0, 2))
    tensor.data[...] = raw.reshape(tensor.data.shape)
