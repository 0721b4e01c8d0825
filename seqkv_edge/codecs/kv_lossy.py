"""Lossy KV tier: quantized, entropy-coded KV snapshots with rate control (codec id ``kv_lossy``).

Per tensor (one layer's K or V), on float32 values ``[n_cells, n_channels]``:

1. keys: RoPE undone (``seqkv_edge.rope``), so a channel's constant part is a constant again;
2. *sink* cells (positions ``< n_sink``: the attention sink the model parks attention on) kept as f16;
3. per-channel offsets (means) subtracted; format 2 with a model profile (``seqkv_edge.kv_profile``): each
   head mapped onto model-derived components (values: their KLT; keys: whitened by the queries' metric, then
   KLT, so that squared error is squared error in attention scores);
4. one uniform step per head: ``step = scale * weight * rms(head)`` with ``weight`` the K or V share of the
   bit allocation; ``scale`` is the rate-control knob. Per-component adaptive entropy coding makes this
   reverse water-filling: a component whose spread is below the step costs almost nothing. Format 2: the
   last ``N_RECENT`` cells get ``RECENT_DIVISOR`` x finer steps (the next tokens attend to them most);
5. indices coded by rANS with one adaptive model per channel / component (``native/lossy.c``).

Measured (default model, GPL-3, 1,000 context tokens, 256 teacher-forced, flash attention), mean KL / top-1:
at 2 bits per value 0.031 / 92.2% (format 1) -> 0.011 / 95-96% (format 2 with the profile); at 3 bits
0.0108 / 96.1% -> 0.005-0.006 / 98%.

Decoding inverts this and writes each tensor in the *target* tensor's cache type (f16, bf16, f32, q8_0,
q4_0; quantized types with llama.cpp's Hadamard rotation where it applies).

Rate control: ``bits`` (average bits per KV value over the whole state, side information counted) is hit
by a secant search on log(scale); ``max_kl`` maps to a scale through a power law calibrated with the
quality harness on the default model (Qwen2.5-Coder-0.5B, GPL-3 text; see benchmarks/lossy_rate_quality.py).

    >>> codec = KVLossyCodec(bits=2.0)                                   # doctest: +SKIP
    >>> payloads = codec.encode_state(state, rope_params(llm))  # one payload per tensor  # doctest: +SKIP
    >>> codec.decode_state(payloads, skeleton_tensors, positions, rope)  # fills the views in place  # doctest: +SKIP
    >>> profile = load_or_build_profile(llm)  # format 2: model-derived bases  # doctest: +SKIP
    >>> payloads = codec.encode_state(state, rope_params(llm), profile=profile)  # doctest: +SKIP

Payload format version 1 (little-endian), one per tensor in ``state.tensors()`` order::

    u8 version=1, u8 flags (bit 0: RoPE undone), u16 n_heads, u32 n_cells, u32 n_channels,
    u32 n_sink, u32 coded_bytes, f32 offset[n_channels], f16 step[n_channels], u32 sink_rows[n_sink],
    f16 sink_values[n_sink, n_channels], coded bytes (native lossy_encode of the other cells' indices)

Payload format version 2: as version 1, with two optional parts right after the header, in this order:

- flags bit 2 (recent window): ``u32 n_recent, f16 recent_divisor, u32 recent_coded_bytes``; the last
  ``n_recent`` non-sink cells use steps ``step / recent_divisor`` and are coded as a separate stream (their own
  adaptive models) of ``recent_coded_bytes``, after the older cells' stream (``coded_bytes`` counts both);
- flags bit 1 (rotated): ``u8 profile_digest[8]``; ``step`` then holds the per-component steps of the coded
  domain, the indices are those of ``(x - offset) @ analysis[head]`` and decoding is
  ``offset + (q * step) @ synthesis[head]`` with the profile's matrices (``kv_profile.KVProfile``), found by
  digest.
"""
from __future__ import annotations

import logging
import math
import struct

import numpy as np

from ..errors import CorruptDataError, ModelMismatchError, SeqKVError, UnsupportedStateError
from ..kv_profile import DIGEST_BYTES, KVProfile, load_or_build_profile, profile_for_digest
from ..rope import apply_rope, rope_params, rope_supported, undo_rope
from . import register_codec
from .base import Codec

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
VERSIONS = (1, 2)
_HEADER = struct.Struct("<BBHIIII")
_HEADER2 = struct.Struct("<IeI")  # format 2: n_recent, recent_divisor, recent_coded_bytes
_FLAG_ROPE, _FLAG_ROTATED, _FLAG_RECENT = 1, 2, 4
N_SINK = 1
# format 2: the last N_RECENT cells (the ones the next tokens attend to most) get steps RECENT_DIVISOR x finer,
# in states of at least 4 * N_RECENT cells
# (measured on the default model at ~2 bits/value: mean KL 0.0247 -> 0.0164 with 128 cells at 4x finer)
N_RECENT, RECENT_DIVISOR = 128, 4.0
# steps relative to the head rms: V tolerates ~3x the K step for the same KL (measured, DESIGN §3 model)
_WEIGHT = {"k": 1.0, "v": 3.0}
_GAMMA = {"k": 0.0, "v": 0.0}  # per-channel step ~ (channel rms / head rms) ** gamma
# max_kl -> scale: (scale, mean KL) measured with the quality harness on the default model (GPL-3, 1,000
# context tokens, flash attention), interpolated log-log; slopes 1.5 / 2.7 outside the table
_KL_TABLE = ((0.144, 0.0046), (0.300, 0.0107), (0.601, 0.0306), (0.883, 0.0838), (1.314, 0.256))
_KL_SLOPES = (1.5, 2.7)
# format 2 with the model's profile (query-metric keys, recent window), same harness; KL is noisy to ~15%
_KL_TABLE_PROFILE = ((0.142, 0.0042), (0.262, 0.0060), (0.524, 0.0110), (0.773, 0.0208), (1.192, 0.059))
_KL_SLOPES_PROFILE = (0.6, 2.4)
_SCALE_RANGE = (1e-4, 64.0)

__all__ = ["KVLossyCodec", "KVProfile", "load_or_build_profile", "rope_params", "tensor_values", "store_values"]


_NATIVE = None


def _native():
    """(ffi, lib) of the native core; a stale build shadowing the fresh one is looked past (with a warning)."""
    global _NATIVE
    if _NATIVE is None:
        from .. import _native as mod

        _NATIVE = (mod.ffi, mod.lib) if hasattr(mod.lib, "lossy_encode") else _fresh_native(mod)
    return _NATIVE


def _fresh_native(mod):
    import importlib.util
    from pathlib import Path

    for path in sorted(Path(mod.__file__).parent.glob("_native*.so"), key=lambda p: -p.stat().st_mtime):
        spec = importlib.util.spec_from_file_location(mod.__name__, path)
        other = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(other)
        if hasattr(other.lib, "lossy_encode"):
            logger.warning("seqkv_edge._native (%s) is a stale build without the lossy coder; using %s. "
                           "Remove the stale file or rebuild with `pip install -e .`", mod.__file__, path.name)
            return other.ffi, other.lib
    raise SeqKVError("the native extension seqkv_edge._native lacks the lossy KV coder: rebuild it with "
                     "`pip install -e .` (a stale _native.cpython-*.so can shadow a fresh _native.abi3.so)")


# --- cache types: values in and out ----------------------------------------------------------------------

def _hadamard(n: int) -> np.ndarray:
    h = np.ones((1, 1), dtype=np.float32)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.float32(math.sqrt(n))


def _rotation_size(kind: str, head_dim: int | None) -> int:
    """llama.cpp stores quantized K/V after a normalised Hadamard rotation (measured on 0.3.36: head 64 ->
    64 for K and V; head 128 -> 128 for K, 64 for V; head 32 -> none)."""
    if not head_dim or head_dim % 64:
        return 0
    return head_dim if kind == "k" and head_dim & (head_dim - 1) == 0 else 64


def _head_dim(rope: dict | None, kind: str) -> int | None:
    return None if not rope else rope.get("head_dim_k" if kind == "k" else "head_dim_v")


def tensor_values(tensor, rope: dict | None = None) -> np.ndarray:
    """A tensor's values as float32 ``[n_cells, n_channels]`` (token-major), quantized types dequantized."""
    name, n_cells, n_ch = tensor.ggml_type.name, tensor.n_cells, tensor.n_channels
    raw = tensor.data
    if name in ("f16", "bf16", "f32"):
        if name == "f16":
            x = raw.view(np.float16).astype(np.float32)
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
    rot = _rotation_size(tensor.kind, _head_dim(rope, tensor.kind))
    if rot:
        x = (x.reshape(n_cells, -1, rot) @ _hadamard(rot)).reshape(n_cells, n_ch)
    return np.ascontiguousarray(x, dtype=np.float32)


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
        raw = x.astype(np.float16).view(np.uint8)
    elif name == "bf16":
        bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
        rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16  # round to nearest even
        raw = np.where(np.isnan(x), (bits >> 16) | np.uint32(0x40), rounded).astype(np.uint16).view(np.uint8)
    elif name == "f32":
        raw = x.astype(np.float32).view(np.uint8)
    elif name in ("q8_0", "q4_0"):
        rot = _rotation_size(tensor.kind, _head_dim(rope, tensor.kind))
        if rot:
            x = (x.reshape(x.shape[0], -1, rot) @ _hadamard(rot)).reshape(x.shape)
        raw = (_quantize_q8_0 if name == "q8_0" else _quantize_q4_0)(np.ascontiguousarray(x, dtype=np.float32))
    else:
        raise UnsupportedStateError(f"{tensor.name}: the lossy KV codec writes f16, bf16, f32, q8_0 and q4_0 "
                                    f"caches, not {name}")
    if tensor.transposed:
        raw = np.ascontiguousarray(raw.reshape(tensor.n_cells, tensor.n_channels, -1).transpose(1, 0, 2))
    tensor.data[...] = raw.reshape(tensor.data.shape)


# --- one tensor ------------------------------------------------------------------------------------------

def _per_head(x: np.ndarray, matrices: np.ndarray, n_heads: int) -> np.ndarray:
    """``x[:, head] @ matrices[head]`` for each head of ``x`` ``[n_cells, n_heads * head_dim]`` (BLAS matmul)."""
    heads = x.reshape(len(x), n_heads, -1).transpose(1, 0, 2)
    return np.ascontiguousarray(np.matmul(heads, matrices).transpose(1, 0, 2).reshape(x.shape), dtype=np.float32)


class _Prepared:
    """A tensor made ready to quantize at any scale: residuals, offsets, head rms, sink rows."""

    def __init__(self, tensor, positions: np.ndarray, rope: dict | None, profile=None, version: int = FORMAT_VERSION):
        x = tensor_values(tensor, rope)
        self.version = version
        self.kind, self.name, self.layer = tensor.kind, tensor.name, tensor.layer
        self.roped = tensor.kind == "k" and rope_supported(rope)
        if self.roped:
            x = undo_rope(x, positions, rope)
        n_cells, n_ch = x.shape
        head_dim = _head_dim(rope, tensor.kind) or n_ch
        self.n_heads = n_ch // head_dim if n_ch % head_dim == 0 else 1
        sink = positions < N_SINK
        self.sink_rows = np.flatnonzero(sink).astype(np.uint32)
        self.sink_values = x[sink].astype(np.float16)
        body = x[~sink]
        self.offset = body.mean(axis=0, dtype=np.float64).astype(np.float32) if len(body) else np.zeros(n_ch, np.float32)
        self.body = np.ascontiguousarray(body - self.offset, dtype=np.float32)
        head_dim = n_ch // self.n_heads
        matrices = profile.matrices(self.kind, self.layer, self.n_heads, head_dim) if profile is not None else None
        self.digest = profile.digest if matrices is not None else None
        if matrices is not None and len(body):
            self.body = _per_head(self.body, matrices[0], self.n_heads)
        ms = (self.body.reshape(len(body), self.n_heads, -1) ** 2).mean(axis=(0, 2)) if len(body) else np.ones(self.n_heads)
        self.head_rms = np.sqrt(np.maximum(ms, 1e-30)).astype(np.float32)
        ch_rms = np.sqrt(np.maximum((self.body ** 2).mean(axis=0), 1e-30)) if len(body) else np.ones(n_ch)
        rel = ch_rms / np.repeat(self.head_rms, n_ch // self.n_heads)
        self.channel_shape = (rel ** _GAMMA[self.kind]).astype(np.float32)
        self.n_cells, self.n_channels = n_cells, n_ch
        self.zero = np.zeros(n_ch, np.float32)

    def encode(self, scale: float, weights: dict | None = None) -> bytes:
        weight = _WEIGHT[self.kind]
        if weights and self.kind in weights and self.layer < len(weights[self.kind]):
            weight *= float(weights[self.kind][self.layer])
        head_step = self.head_rms * np.float32(scale * weight)
        step = np.repeat(head_step, self.n_channels // self.n_heads) * self.channel_shape
        step = np.clip(step, 1e-7, 6e4).astype(np.float16)  # the decoder sees exactly these steps
        inv = np.float32(1.0) / step.astype(np.float32)
        n_body = self.body.shape[0]
        n_recent = N_RECENT if self.version >= 2 and n_body >= 4 * N_RECENT else 0  # only where older cells dominate
        older = self._code_rows(self.body[:n_body - n_recent], inv)
        recent = self._code_rows(self.body[n_body - n_recent:], inv * np.float32(RECENT_DIVISOR))
        flags = ((_FLAG_ROPE if self.roped else 0) | (_FLAG_ROTATED if self.digest is not None else 0)
                 | (_FLAG_RECENT if n_recent else 0))
        header = _HEADER.pack(self.version, flags, self.n_heads, self.n_cells, self.n_channels,
                              len(self.sink_rows), len(older) + len(recent))
        digest = self.digest if self.digest is not None else b""
        if n_recent:
            header += _HEADER2.pack(n_recent, RECENT_DIVISOR, len(recent))
        return b"".join([header, digest, self.offset.tobytes(), step.tobytes(),
                         self.sink_rows.tobytes(), self.sink_values.tobytes(), older, recent])

    def _code_rows(self, rows: np.ndarray, inv: np.ndarray) -> bytes:
        """Quantize ``rows`` with steps ``1 / inv`` and entropy-code them (one adaptive model per column)."""
        if not rows.size:
            return b""
        ffi, lib = _native()
        rows = np.ascontiguousarray(rows)
        q = np.empty(rows.shape, np.int32)
        lib.lossy_quantize(ffi.from_buffer("float[]", rows), rows.shape[0], self.n_channels,
                           ffi.from_buffer("float[]", self.zero), ffi.from_buffer("float[]", inv),
                           ffi.from_buffer("int32_t[]", q))
        cap = lib.lossy_encode_bound(q.size)
        coded = bytearray(cap)
        n = lib.lossy_encode(ffi.from_buffer("int32_t[]", q), rows.shape[0], self.n_channels,
                             ffi.from_buffer("uint8_t[]", coded), cap)
        if n == 0:
            raise SeqKVError(f"encoding {self.name}: the native lossy coder failed (out of memory?)")
        return bytes(memoryview(coded)[:n])


def _decode_tensor(payload, tensor, positions: np.ndarray, rope: dict | None, profile=None) -> None:
    ffi, lib = _native()
    buf = memoryview(payload).cast("B")
    if len(buf) < _HEADER.size:
        raise CorruptDataError(f"decoding {tensor.name}: lossy payload of {len(buf)} bytes is truncated")
    version, flags, n_heads, n_cells, n_ch, n_sink, n_coded = _HEADER.unpack_from(buf)
    if version not in VERSIONS or (version == 1 and flags & (_FLAG_ROTATED | _FLAG_RECENT)):
        raise CorruptDataError(f"decoding {tensor.name}: lossy KV format version {version}; this version reads "
                               f"{', '.join(map(str, VERSIONS))} (written by a newer seqkv_edge?)")
    off = _HEADER.size
    n_recent, divisor, n_coded_recent = 0, 1.0, 0
    if flags & _FLAG_RECENT:
        if len(buf) < off + _HEADER2.size:
            raise CorruptDataError(f"decoding {tensor.name}: lossy payload of {len(buf)} bytes is truncated")
        n_recent, divisor, n_coded_recent = _HEADER2.unpack_from(buf, off)
        off += _HEADER2.size
    if (n_cells, n_ch) != (tensor.n_cells, tensor.n_channels):
        raise ModelMismatchError(f"decoding {tensor.name}: the payload holds {n_cells} cells x {n_ch} channels, "
                                 f"the context's tensor {tensor.n_cells} x {tensor.n_channels}")
    if (n_heads == 0 or n_ch % n_heads or n_sink > n_cells or n_recent > n_cells - n_sink or not divisor > 0
            or n_coded_recent > n_coded):
        raise CorruptDataError(f"decoding {tensor.name}: inconsistent lossy header ({n_heads} heads, {n_sink} sinks)")
    n_digest = DIGEST_BYTES if flags & _FLAG_ROTATED else 0
    sizes = [4 * n_ch, 2 * n_ch, 4 * n_sink, 2 * n_sink * n_ch, n_coded]
    if off + n_digest + sum(sizes) != len(buf):
        raise CorruptDataError(f"decoding {tensor.name}: lossy payload has {len(buf)} bytes, its header "
                               f"describes {off + n_digest + sum(sizes)}")
    digest = bytes(buf[off:off + n_digest])
    off, parts = off + n_digest, []
    for size in sizes:
        parts.append(buf[off:off + size])
        off += size
    offset = np.frombuffer(parts[0], np.float32)
    step = np.frombuffer(parts[1], np.float16).astype(np.float32)
    sink_rows = np.frombuffer(parts[2], np.uint32)
    if n_sink and sink_rows.max() >= n_cells:
        raise CorruptDataError(f"decoding {tensor.name}: sink row out of range")
    n_body = n_cells - n_sink
    q = np.empty((n_body, n_ch), np.int32)
    n_older = n_coded - n_coded_recent
    streams = ((slice(0, n_body - n_recent), parts[4][:n_older]), (slice(n_body - n_recent, n_body), parts[4][n_older:]))
    for rows, coded in streams:
        n_rows = rows.stop - rows.start
        rc = lib.lossy_decode(ffi.from_buffer("uint8_t[]", coded), len(coded), n_rows, n_ch,
                              ffi.from_buffer("int32_t[]", q[rows])) if n_rows * n_ch or len(coded) else 0
        if rc != 0:
            raise CorruptDataError(f"decoding {tensor.name}: the entropy-coded indices are corrupt (code {rc})")
    body = np.empty((n_body, n_ch), np.float32)
    zero = np.zeros(n_ch, np.float32)
    recent_step = step / np.float32(divisor)
    for rows, row_step in ((slice(0, n_body - n_recent), step), (slice(n_body - n_recent, n_body), recent_step)):
        if rows.stop > rows.start:
            lib.lossy_dequantize(ffi.from_buffer("int32_t[]", q[rows]), rows.stop - rows.start, n_ch,
                                 ffi.from_buffer("float[]", zero), ffi.from_buffer("float[]", row_step),
                                 ffi.from_buffer("float[]", body[rows]))
    if n_digest:
        head_dim = n_ch // n_heads
        found = profile_for_digest(digest, profile)
        matrices = found.matrices(tensor.kind, tensor.layer, n_heads, head_dim)
        if matrices is None:
            raise ModelMismatchError(f"decoding {tensor.name}: KV profile {found.digest.hex()} has no "
                                     f"{n_heads} x {head_dim} basis for this tensor")
        body = _per_head(body, matrices[1], n_heads)
    body += offset
    x = np.empty((n_cells, n_ch), np.float32)
    sink = np.zeros(n_cells, bool)
    sink[sink_rows] = True
    x[sink_rows] = np.frombuffer(parts[3], np.float16).reshape(n_sink, n_ch)
    x[~sink] = body
    if flags & _FLAG_ROPE:
        if not rope_supported(rope):
            raise ModelMismatchError(f"decoding {tensor.name}: keys were coded without RoPE; the restoring "
                                     "model's rope parameters are needed (rope_params(llm))")
        x = apply_rope(x, positions, rope)
    store_values(tensor, x, rope)


def scale_for_kl(max_kl: float, profiled: bool = False) -> float:
    """The step scale whose measured mean KL on the calibration set is ``max_kl`` (log-log interpolation);
    ``profiled``: the table of format 2 with a model profile."""
    table, (low, high) = (_KL_TABLE_PROFILE, _KL_SLOPES_PROFILE) if profiled else (_KL_TABLE, _KL_SLOPES)
    log_s, log_kl = np.log(np.array(table)).T
    x = math.log(max_kl)
    if x < log_kl[0]:
        return float(min(_SCALE_RANGE[1], max(_SCALE_RANGE[0], math.exp(log_s[0] + (x - log_kl[0]) / low))))
    if x > log_kl[-1]:
        return float(min(_SCALE_RANGE[1], math.exp(log_s[-1] + (x - log_kl[-1]) / high)))
    return float(math.exp(np.interp(x, log_kl, log_s)))


# --- the codec -------------------------------------------------------------------------------------------

@register_codec
class KVLossyCodec(Codec):
    """Lossy KV snapshots at a target rate (``bits`` per value) or quality (``max_kl`` nats per token).

    ``encode_state`` returns one payload per tensor in ``state.tensors()`` order; ``decode_state`` fills the
    writable tensor views of a skeleton (``state.skeleton_layout``) in their own cache types.
    """

    codec_id = "kv_lossy"

    def __init__(self, bits: float | None = None, max_kl: float | None = None, version: int = FORMAT_VERSION,
                 weights: dict | None = None):
        if (bits is None) == (max_kl is None):
            raise ValueError("KVLossyCodec: give exactly one of bits (target bits per value) or max_kl")
        if bits is not None and not 0.05 <= bits <= 16:
            raise ValueError(f"KVLossyCodec(bits={bits}): choose 0.05 to 16 bits per value")
        if max_kl is not None and not max_kl > 0:
            raise ValueError(f"KVLossyCodec(max_kl={max_kl}): must be > 0 nats per token")
        if version not in VERSIONS:
            raise ValueError(f"KVLossyCodec(version={version}): this seqkv_edge writes versions {VERSIONS}")
        if weights is not None and not all(k in ("k", "v") and all(w > 0 for w in ws) for k, ws in weights.items()):
            raise ValueError("KVLossyCodec(weights=...): {'k': [per-layer step multipliers > 0], 'v': [...]}")
        self.bits, self.max_kl, self.version = bits, max_kl, version
        self.weights = None if weights is None else {k: [float(w) for w in ws] for k, ws in weights.items()}
        self.last_scale: float | None = None

    def get_config(self) -> dict:
        config = {"id": self.codec_id, "bits": self.bits, "max_kl": self.max_kl, "version": self.version}
        if self.weights is not None:
            config["weights"] = self.weights
        return config

    def encode_state(self, state, rope: dict | None, profile: KVProfile | None = None) -> list[bytes]:
        """One payload per tensor of ``state`` (a ``SeqState``), rate-controlled over the whole state.

        With a ``profile`` (``kv_profile.load_or_build_profile(llm)``, format version 2 only) each head is
        coded in the model's components: about 3x less KL at 2 bits per value on the default model.
        """
        if profile is not None and self.version < 2:
            raise ValueError("KVLossyCodec(version=1) cannot use a KV profile: profiles need format version 2")
        prepared = []
        for sec in state.sections:
            for st in sec.streams:
                prepared += [_Prepared(t, st.positions, rope, profile, self.version) for t in st.k + st.v]
        n_values = sum(p.n_cells * p.n_channels for p in prepared)
        if self.max_kl is not None:
            scale = scale_for_kl(self.max_kl, profiled=any(p.digest is not None for p in prepared))
            payloads = [p.encode(scale, self.weights) for p in prepared]
        else:
            scale, payloads = self._search(prepared, n_values)
        self.last_scale = scale
        logger.debug("kv_lossy: scale %.4g, %.3f bits per value", scale,
                     8 * sum(map(len, payloads)) / max(n_values, 1))
        return payloads

    def _search(self, prepared, n_values: int):
        """Secant search on log(scale): rate falls ~1 bit per doubling of the step."""
        def rate(log_s):
            payloads = [p.encode(math.exp(log_s), self.weights) for p in prepared]
            return 8 * sum(map(len, payloads)) / max(n_values, 1), payloads

        lo, hi = (math.log(s) for s in _SCALE_RANGE)
        x0 = math.log(0.5)
        b0, best = rate(x0)
        x1 = min(hi, max(lo, x0 + (b0 - self.bits) * math.log(2)))
        b1, p1 = rate(x1)
        tried = [(abs(b0 / self.bits - 1), x0, best), (abs(b1 / self.bits - 1), x1, p1)]
        for _ in range(10):
            if min(tried, key=lambda r: r[0])[0] < 0.01 or b1 == b0:
                break
            x2 = min(hi, max(lo, x1 + (self.bits - b1) * (x1 - x0) / (b1 - b0)))
            x0, b0 = x1, b1
            x1 = x2
            b1, p1 = rate(x1)
            tried.append((abs(b1 / self.bits - 1), x1, p1))
        err, x, payloads = min(tried, key=lambda r: r[0])
        return math.exp(x), payloads

    def decode_state(self, payloads, tensors, positions, rope: dict | None, profile: KVProfile | None = None) -> None:
        """Fill ``tensors`` (writable ``KVTensor`` views, ``tensors()`` order) from ``payloads``.

        ``positions`` is one int32 array of cell positions per stream (``stream.positions``), in section and
        stream order; a single array is used for every tensor. Rotated (format 2) payloads use ``profile`` if
        its digest matches, else the cached profile of that digest (``$SEQKV_HOME/kv_profiles``).
        """
        payloads = list(payloads)
        if len(payloads) != len(tensors):
            raise CorruptDataError(f"decoding a lossy KV state: {len(payloads)} payloads for {len(tensors)} tensors")
        per_stream = positions if isinstance(positions, (list, tuple)) else None
        stream_index, keys = {}, []
        for t in tensors:
            keys.append((t.section, t.stream))
            stream_index.setdefault((t.section, t.stream), len(stream_index))
        for payload, tensor, key in zip(payloads, tensors, keys):
            pos = per_stream[stream_index[key]] if per_stream is not None else positions
            pos = np.asarray(pos, dtype=np.int32)
            if len(pos) != tensor.n_cells:
                raise ModelMismatchError(f"decoding {tensor.name}: {len(pos)} cell positions for {tensor.n_cells} cells")
            _decode_tensor(payload, tensor, pos, rope, profile)

    def encode(self, buf):  # the generic byte-codec entry points do not apply to a whole state
        raise TypeError("KVLossyCodec codes whole states: use encode_state(state, rope)")

    def decode(self, buf, out=None):
        raise TypeError("KVLossyCodec codes whole states: use decode_state(payloads, tensors, positions, rope)")
