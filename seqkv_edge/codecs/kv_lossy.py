"""Lossy KV tier: quantized, entropy-coded KV snapshots with rate control (codec id ``kv_lossy``).

Per tensor (one layer's K or V), on float32 values ``[n_cells, n_channels]``:

1. keys: RoPE undone (``seqkv_edge.rope``), so a channel's constant part is a constant again;
2. *sink* cells (positions ``< n_sink``: the attention sink the model parks attention on) kept as f16;
3. per-channel offsets (means) subtracted; formats 2 and later with a model profile (``seqkv_edge.kv_profile``): each
   head mapped onto model-derived components (values: their KLT; keys: whitened by the queries' metric, then
   KLT, so that squared error is squared error in attention scores);
3b. format 4 with a profile holding predictors (version 2, ``seqkv_edge.kv_predict``): tensors coded layer by
   layer, K first; each one's components minus a linear prediction from the *decoded* components of the
   previous layer's K and V (and, for V, its own layer's K): a closed loop, so errors do not accumulate;
4. one uniform step per head: ``step = scale * weight * rms(head)`` with ``weight`` the K or V share of the
   bit allocation times the head's step weight (``seqkv_edge.kv_weights``: measured per-head sensitivity,
   attached to the model profile, or ``weights=`` given); ``scale`` is the rate-control knob. Per-component
   entropy coding makes this reverse water-filling: a component whose spread is below the step costs almost nothing. Format 2: the
   last ``N_RECENT`` cells get ``RECENT_DIVISOR`` x finer steps (the next tokens attend to them most);
5. indices entropy-coded by rANS (``native/lossy3.c``; formats 1 and 2: ``native/lossy.c``): format 3 gives each channel / component a static model
   (P(0), P(1 | not 0) and a geometric tail, 30 bits per channel and stream) fitted to its own indices, codes
   channel by channel with four interleaved states, and predicts its size exactly from the index statistics
   (the rate search codes once); formats 1 and 2 used adaptive models (about 4% more bits at 2 bits per value).

Measured (default model, GPL-3, 1,000 context tokens, 256 teacher-forced, flash attention), mean KL / top-1, in
one run of ``benchmarks/lossy_rate_quality.py --ours-only --v2``: at 2 bits per value 0.0126 / 94.9% (format 3),
0.0118 / 94.1% (format 2); at 3 bits 0.0052 / 97.3% (format 3) and 0.0056 / 96.5% (format 2); format 1 gave
0.031 / 92.2% at 2 bits. Any change to the cache, even one f16 ulp in 0.01% of the values, costs this Q4_K_M model
~0.004 nats of KL (its quantized activations amplify it): that floor is in every figure above. With the model's
per-head step weights (``seqkv_edge.kv_weights``), averaged over six texts (``benchmarks/lossy_weights.py``):
0.0073 / 95.0% at 2 bits (uniform steps 0.0113 / 94.0%), 0.0033 / 96.2% at 3 bits (format 3). Format 4's
inter-layer prediction, same six texts: 0.0042 / 96.5% at 2 bits (format 3: 0.0073 / 95.0%).

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

Payload format version 3: as version 2; each coded stream (the older cells', then the recent window's) is a
``lossy3`` stream of ``native/lossy3.h`` (static per-channel models in a bit-packed header, then the rANS words),
and the decoder writes ``index * step`` directly.

Payload format version 4: as version 3, plus flags bit 3 (predicted, only with bit 1): the coded components are
the residuals of the profile's inter-layer prediction (``kv_predict``); the decoder adds
``predict(decoded, kind, layer, W)`` (``W`` from the profile named by the digest; the previous layer's K and V and,
for V, the same layer's K, decoded first). Layer 0's K (nothing before it) is never predicted.
"""
from __future__ import annotations

import logging
import math
import struct
import threading

import numpy as np

from ..errors import CorruptDataError, ModelMismatchError, SeqKVError
from ..kv_predict import ClosedLoop, feature_keys, forget_unused, predict
from ..kv_profile import DIGEST_BYTES, KVProfile, load_or_build_profile, profile_for_digest
from ..rope import apply_rope, rope_params, rope_supported, undo_rope
from . import register_codec
from .base import Codec
from .kv_values import _native, rope_head_dim, store_values, tensor_values

logger = logging.getLogger(__name__)

FORMAT_VERSION = 4
VERSIONS = (1, 2, 3, 4)
_HEADER = struct.Struct("<BBHIIII")
_HEADER2 = struct.Struct("<IeI")  # format 2: n_recent, recent_divisor, recent_coded_bytes
_FLAG_ROPE, _FLAG_ROTATED, _FLAG_RECENT, _FLAG_PREDICTED = 1, 2, 4, 8
N_SINK = 1
# format 2: the last N_RECENT cells (the ones the next tokens attend to most) get steps RECENT_DIVISOR x finer,
# in states of at least 4 * N_RECENT cells
# (measured on the default model at ~2 bits/value: mean KL 0.0247 -> 0.0164 with 128 cells at 4x finer)
N_RECENT, RECENT_DIVISOR = 128, 4.0
# steps relative to the head rms: V tolerates ~3x the K step for the same KL (measured, DESIGN §3 model)
_WEIGHT = {"k": 1.0, "v": 3.0}
# max_kl -> scale: (scale, mean KL) measured with the quality harness on the default model (GPL-3, 1,000
# context tokens, flash attention), interpolated log-log; slopes 1.5 / 2.7 outside the table
_KL_TABLE = ((0.144, 0.0046), (0.300, 0.0107), (0.601, 0.0306), (0.883, 0.0838), (1.314, 0.256))
_KL_SLOPES = (1.5, 2.7)
# format 4 with the model's profile, its predictors and per-head step weights (kv_weights), same harness, mean of
# GPL-3, MPL-2.0 and fortunes/people (format 3 gave KL within 13% of these at each scale, at ~0.5 bit more);
# below ~0.003 nats the model's own floor dominates (any change costs that much)
_KL_TABLE_PROFILE = ((0.12, 0.0028), (0.2, 0.0034), (0.3, 0.0049), (0.45, 0.0074), (0.65, 0.0129), (0.9, 0.0236),
                     (1.3, 0.0443))
_KL_SLOPES_PROFILE = (0.6, 1.5)
_SCALE_RANGE = (1e-4, 64.0)
_SEARCH_ROW_EVERY = 16  # formats 3 and 4 predict the rate during the search from every 16th cell ...
_CHECK_ROW_EVERY = 2  # ... and check the result on every 2nd cell

__all__ = ["KVLossyCodec", "KVProfile", "load_or_build_profile", "rope_params", "tensor_values", "store_values"]


# --- one tensor ------------------------------------------------------------------------------------------

def _per_head(x: np.ndarray, matrices: np.ndarray, n_heads: int) -> np.ndarray:
    """``x[:, head] @ matrices[head]`` for each head of ``x`` ``[n_cells, n_heads * head_dim]`` (BLAS matmul)."""
    out = np.empty(x.shape, np.float32)
    width = x.shape[1] // n_heads
    for h in range(n_heads):
        cols = slice(h * width, (h + 1) * width)
        np.matmul(x[:, cols], matrices[h], out=out[:, cols])
    return out


def _recent_rows(version: int, n_body: int) -> int:
    """Cells of the recent window (finer steps): only where older cells dominate."""
    return N_RECENT if version >= 2 and n_body >= 4 * N_RECENT else 0


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
        head_dim = rope_head_dim(rope, tensor.kind) or n_ch
        self.n_heads = n_ch // head_dim if n_ch % head_dim == 0 else 1
        sink = positions < N_SINK
        self.sink_rows = np.flatnonzero(sink).astype(np.uint32)
        self.sink_values = x[sink].astype(np.float16)
        body = x[~sink] if len(self.sink_rows) else x
        self.offset = body.mean(axis=0).astype(np.float32) if len(body) else np.zeros(n_ch, np.float32)
        body -= self.offset
        head_dim = n_ch // self.n_heads
        matrices = profile.matrices(self.kind, self.layer, self.n_heads, head_dim) if profile is not None else None
        self.digest = profile.digest if matrices is not None else None
        if matrices is not None and len(body):
            body = _per_head(body, matrices[0], self.n_heads)
        self.body = np.ascontiguousarray(body, dtype=np.float32)
        squares = np.einsum("ij,ij->j", self.body, self.body) / max(len(body), 1)
        ms = squares.reshape(self.n_heads, -1).mean(axis=1) if len(body) else np.ones(self.n_heads)
        self.head_rms = np.sqrt(np.maximum(ms, 1e-30)).astype(np.float32)
        self.n_cells, self.n_channels = n_cells, n_ch
        self.n_recent = _recent_rows(version, len(self.body))
        self.side_bytes = (_HEADER.size + (_HEADER2.size if self.n_recent else 0) + (DIGEST_BYTES if self.digest else 0)
                           + 6 * n_ch + self.sink_rows.nbytes + self.sink_values.nbytes)

    def steps(self, scale: float, weights: dict | None = None) -> np.ndarray:
        """The per-channel steps (as the decoder sees them: f16) at rate knob ``scale``."""
        weight = np.float32(scale * _WEIGHT[self.kind])
        if weights and self.kind in weights and self.layer < len(weights[self.kind]):
            layer_weight = np.asarray(weights[self.kind][self.layer], np.float32)  # one, or one per head
            if layer_weight.size not in (1, self.n_heads):
                raise ValueError(f"step weights of {self.name}: {layer_weight.size} given for {self.n_heads} heads")
            weight = weight * layer_weight.reshape(-1)
        head_step = self.head_rms * weight
        return np.clip(np.repeat(head_step, self.n_channels // self.n_heads), 1e-7, 6e4).astype(np.float16)

    def _parts(self, inv: np.ndarray, body: np.ndarray | None = None):
        """(rows, inverse steps) of the older cells and of the recent window of ``body`` (default: the tensor's)."""
        body = self.body if body is None else body
        split = len(body) - self.n_recent
        return ((body[:split], inv), (body[split:], inv * np.float32(RECENT_DIVISOR)))

    def sample_rows(self, row_every: int) -> np.ndarray:
        """The rows ``estimate_bits(row_every=...)`` reads: every ``row_every``-th of each part."""
        split = len(self.body) - self.n_recent
        return np.concatenate([np.arange(0, split, row_every), np.arange(split, len(self.body), row_every)])

    def reconstruct(self, rows: np.ndarray, scale: float, weights: dict | None, index: np.ndarray | None = None):
        """What the decoder gets back for ``rows`` (body rows ``index``, ascending, default all) coded at ``scale``."""
        ffi, lib = _native()
        step = self.steps(scale, weights).astype(np.float32)
        inv = np.float32(1.0) / step
        split = len(self.body) - self.n_recent
        split = split if index is None else int(np.searchsorted(index, split))  # older rows first, then recent
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        out = np.empty(rows.shape, np.float32)
        for part, div in ((slice(0, split), np.float32(1.0)), (slice(split, None), np.float32(RECENT_DIVISOR))):
            if rows[part].size:
                lib.lossy3_reconstruct(ffi.from_buffer("float[]", rows[part]), rows[part].shape[0], self.n_channels,
                                       ffi.from_buffer("float[]", inv * div), ffi.from_buffer("float[]", step / div),
                                       ffi.from_buffer("float[]", out[part]))
        return out

    def estimate_bits(self, scale: float, weights: dict | None = None, row_every: int = 1,
                      body: np.ndarray | None = None) -> float:
        """Format 3 and later: the payload size in bits at ``scale`` of ``body`` (default: the tensor's; format 4:
        its prediction residuals), from the index statistics of every ``row_every``-th cell (no entropy coding)."""
        ffi, lib = _native()
        inv = np.float32(1.0) / self.steps(scale, weights).astype(np.float32)
        bits = 8.0 * self.side_bytes
        for rows, row_inv in self._parts(inv, body):
            if rows.size:
                bits += lib.lossy3_cost(ffi.from_buffer("float[]", rows), rows.shape[0], self.n_channels,
                                        ffi.from_buffer("float[]", row_inv), row_every)
        return bits

    def encode(self, scale: float, weights: dict | None = None, residual: np.ndarray | None = None) -> bytes:
        """The payload at ``scale``; format 4: ``residual`` (the closed-loop prediction residual) coded instead
        of the body, flagged as predicted."""
        step = self.steps(scale, weights)
        inv = np.float32(1.0) / step.astype(np.float32)
        coder = self._code_rows3 if self.version >= 3 else self._code_rows
        older, recent = (coder(np.ascontiguousarray(rows), row_inv) for rows, row_inv in self._parts(inv, residual))
        flags = ((_FLAG_ROPE if self.roped else 0) | (_FLAG_ROTATED if self.digest is not None else 0)
                 | (_FLAG_RECENT if self.n_recent else 0) | (_FLAG_PREDICTED if residual is not None else 0))
        header = _HEADER.pack(self.version, flags, self.n_heads, self.n_cells, self.n_channels,
                              len(self.sink_rows), len(older) + len(recent))
        digest = self.digest if self.digest is not None else b""
        if self.n_recent:
            header += _HEADER2.pack(self.n_recent, RECENT_DIVISOR, len(recent))
        return b"".join([header, digest, self.offset.tobytes(), step.tobytes(),
                         self.sink_rows.tobytes(), self.sink_values.tobytes(), older, recent])

    def _code_rows3(self, rows: np.ndarray, inv: np.ndarray) -> bytes:
        """Format 3: quantize ``rows`` with steps ``1 / inv`` and code them (native, static per-channel models)."""
        if not rows.size:
            return b""
        ffi, lib = _native()
        cap = lib.lossy3_encode_bound(rows.shape[0], self.n_channels)
        coded = _scratch(cap)
        n = lib.lossy3_encode(ffi.from_buffer("float[]", rows), rows.shape[0], self.n_channels,
                              ffi.from_buffer("float[]", inv), ffi.from_buffer("uint8_t[]", coded), cap)
        if n == 0:
            raise SeqKVError(f"encoding {self.name}: the native lossy coder failed (out of memory?)")
        return coded[:n].tobytes()

    def _code_rows(self, rows: np.ndarray, inv: np.ndarray) -> bytes:
        """Formats 1 and 2: quantize ``rows`` with steps ``1 / inv``, then code them (one adaptive model per column)."""
        if not rows.size:
            return b""
        ffi, lib = _native()
        rows = np.ascontiguousarray(rows)
        q = np.empty(rows.shape, np.int32)
        zero = np.zeros(self.n_channels, np.float32)
        lib.lossy_quantize(ffi.from_buffer("float[]", rows), rows.shape[0], self.n_channels,
                           ffi.from_buffer("float[]", zero), ffi.from_buffer("float[]", inv),
                           ffi.from_buffer("int32_t[]", q))
        cap = lib.lossy_encode_bound(q.size)
        coded = bytearray(cap)
        n = lib.lossy_encode(ffi.from_buffer("int32_t[]", q), rows.shape[0], self.n_channels,
                             ffi.from_buffer("uint8_t[]", coded), cap)
        if n == 0:
            raise SeqKVError(f"encoding {self.name}: the native lossy coder failed (out of memory?)")
        return bytes(memoryview(coded)[:n])


_thread_scratch = threading.local()


def _scratch(n_bytes: int) -> np.ndarray:
    """The calling thread's reusable output buffer of at least ``n_bytes`` (fresh pages cost more than coding)."""
    buf = getattr(_thread_scratch, "buf", None)
    if buf is None or buf.size < n_bytes:
        buf = _thread_scratch.buf = np.empty(max(n_bytes, 1 << 20), np.uint8)
    return buf


def _decode_rows(version: int, coded, n_rows: int, n_ch: int, step: np.ndarray, out: np.ndarray, name: str) -> None:
    """Entropy-decode one stream of ``n_rows`` cells and write ``index * step`` into ``out`` (float32 rows)."""
    ffi, lib = _native()
    if not n_rows * n_ch and not len(coded):
        return
    if version >= 3:
        rc = lib.lossy3_decode(ffi.from_buffer("uint8_t[]", coded), len(coded), n_rows, n_ch,
                               ffi.from_buffer("float[]", step), ffi.from_buffer("float[]", out))
    else:
        q = np.empty((n_rows, n_ch), np.int32)
        rc = lib.lossy_decode(ffi.from_buffer("uint8_t[]", coded), len(coded), n_rows, n_ch,
                              ffi.from_buffer("int32_t[]", q))
        if rc == 0 and n_rows:
            lib.lossy_dequantize(ffi.from_buffer("int32_t[]", q), n_rows, n_ch,
                                 ffi.from_buffer("float[]", np.zeros(n_ch, np.float32)),
                                 ffi.from_buffer("float[]", step), ffi.from_buffer("float[]", out))
    if rc != 0:
        raise CorruptDataError(f"decoding {name}: the entropy-coded indices are corrupt (code {rc})")


def _decode_tensor(payload, tensor, positions: np.ndarray, rope: dict | None, profile=None,
                   decoded: dict | None = None) -> None:
    """Decode one payload into ``tensor``; ``decoded`` (``(kind, layer)`` -> coded-domain rows of the stream's
    tensors decoded so far) gives format 4's predictions their features and receives this tensor's rows."""
    buf = memoryview(payload).cast("B")
    if len(buf) < _HEADER.size:
        raise CorruptDataError(f"decoding {tensor.name}: lossy payload of {len(buf)} bytes is truncated")
    version, flags, n_heads, n_cells, n_ch, n_sink, n_coded = _HEADER.unpack_from(buf)
    if version not in VERSIONS or (version == 1 and flags & (_FLAG_ROTATED | _FLAG_RECENT)) or (
            flags & _FLAG_PREDICTED and (version < 4 or not flags & _FLAG_ROTATED)):
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
    n_body, n_older = n_cells - n_sink, n_coded - n_coded_recent
    body = np.empty((n_body, n_ch), np.float32)
    _decode_rows(version, parts[4][:n_older], n_body - n_recent, n_ch, step, body[:n_body - n_recent], tensor.name)
    _decode_rows(version, parts[4][n_older:], n_recent, n_ch, step / np.float32(divisor), body[n_body - n_recent:],
                 tensor.name)
    if n_digest:
        head_dim = n_ch // n_heads
        found = profile_for_digest(digest, profile)
        matrices = found.matrices(tensor.kind, tensor.layer, n_heads, head_dim)
        if matrices is None:
            raise ModelMismatchError(f"decoding {tensor.name}: KV profile {found.digest.hex()} has no "
                                     f"{n_heads} x {head_dim} basis for this tensor")
        if flags & _FLAG_PREDICTED:
            _add_prediction(body, tensor, found, decoded or {})
        if decoded is not None:
            decoded[tensor.kind, tensor.layer] = body
        body = _per_head(body, matrices[1], n_heads)
    body += offset
    if n_sink:
        x = np.empty((n_cells, n_ch), np.float32)
        sink = np.zeros(n_cells, bool)
        sink[sink_rows] = True
        x[sink_rows] = np.frombuffer(parts[3], np.float16).reshape(n_sink, n_ch)
        x[~sink] = body
    else:
        x = body
    if flags & _FLAG_ROPE:
        if not rope_supported(rope):
            raise ModelMismatchError(f"decoding {tensor.name}: keys were coded without RoPE; the restoring "
                                     "model's rope parameters are needed (rope_params(llm))")
        x = apply_rope(x, positions, rope)
    store_values(tensor, x, rope)


def _add_prediction(body: np.ndarray, tensor, profile: KVProfile, decoded: dict) -> None:
    """Format 4: add the inter-layer prediction (``kv_predict``) from the tensors decoded before."""
    keys = feature_keys(tensor.kind, tensor.layer)
    if not keys or any(key not in decoded or len(decoded[key]) != len(body) for key in keys):
        raise CorruptDataError(f"decoding {tensor.name}: predicted from {keys}, which the state does not hold "
                               "decoded before it")
    w = profile.predictor(tensor.kind, tensor.layer, sum(decoded[key].shape[1] for key in keys), body.shape[1])
    if w is None:
        raise ModelMismatchError(f"decoding {tensor.name}: KV profile {profile.digest.hex()} has no predictor of "
                                 f"this shape")
    body += predict(decoded, tensor.kind, tensor.layer, w)


def valid_weights(weights) -> bool:
    """Step weights are ``{"k": [...], "v": [...]}`` (either may be missing), one entry per layer: a positive
    number, or a list of one positive number per head."""
    try:
        return isinstance(weights, dict) and set(weights) <= {"k", "v"} and all(
            np.all(np.asarray(w, dtype=np.float64) > 0) and np.ndim(w) <= 1 for ws in weights.values() for w in ws)
    except (TypeError, ValueError):
        return False


def scale_for_kl(max_kl: float, profiled: bool = False) -> float:
    """The step scale whose measured mean KL on the calibration set is ``max_kl`` (log-log interpolation);
    ``profiled``: the table of format 3 with a model profile and its step weights."""
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
        if weights is not None and not valid_weights(weights):
            raise ValueError("KVLossyCodec(weights=...): {'k': [per-layer step multipliers > 0, or per-head lists "
                             "of them], 'v': [...]}")
        self.bits, self.max_kl, self.version = bits, max_kl, version
        self.weights = None if weights is None else {k: list(ws) for k, ws in weights.items()}
        self.last_scale: float | None = None

    def get_config(self) -> dict:
        config = {"id": self.codec_id, "bits": self.bits, "max_kl": self.max_kl, "version": self.version}
        if self.weights is not None:
            config["weights"] = self.weights
        return config

    def encode_state(self, state, rope: dict | None, profile: KVProfile | None = None) -> list[bytes]:
        """One payload per tensor of ``state`` (a ``SeqState``), rate-controlled over the whole state.

        With a ``profile`` (``kv_profile.load_or_build_profile(llm)``, format version 2 or later) each head is
        coded in the model's components: about 3x less KL at 2 bits per value on the default model; the
        profile's ``step_weights`` (``seqkv_edge.kv_weights``) then set per-head steps unless the codec was
        given ``weights`` (``weights={}``: uniform steps).
        """
        if profile is not None and self.version < 2:
            raise ValueError("KVLossyCodec(version=1) cannot use a KV profile: profiles need format version 2")
        prepared, loops = [], []
        for sec in state.sections:
            for st in sec.streams:
                stream = [_Prepared(t, st.positions, rope, profile, self.version) for t in st.k + st.v]
                prepared += stream
                if self.version >= 4 and profile is not None and profile.predictors:
                    loops.append(ClosedLoop(stream, profile))
        loops = [loop for loop in loops if loop.matrix]
        n_values = sum(p.n_cells * p.n_channels for p in prepared)
        weights = self.weights if self.weights is not None else getattr(profile, "step_weights", None)

        def residuals(scale, row_every=1):
            return {p: r for loop in loops for p, r in loop.residuals(scale, weights, row_every).items()}

        if self.max_kl is not None:
            scale, payloads = scale_for_kl(self.max_kl, profiled=any(p.digest is not None for p in prepared)), None
        else:
            scale, payloads = self._search(prepared, n_values, weights, residuals)
        if payloads is None:
            coded = residuals(scale)
            payloads = [p.encode(scale, weights, coded.get(p)) for p in prepared]
        self.last_scale = scale
        logger.debug("kv_lossy: scale %.4g, %.3f bits per value", scale,
                     8 * sum(map(len, payloads)) / max(n_values, 1))
        return payloads

    def _search(self, prepared, n_values: int, weights: dict | None, residuals) -> tuple[float, list | None]:
        """Secant search on log(scale) for the target rate (rate falls ~1 bit per doubling of the step).

        Format 3 and later search on the sizes the static models predict from the index statistics of every
        16th cell (format 4: of those cells' closed-loop residuals, ``residuals(scale, row_every)``), check the
        prediction once on every 2nd cell (the subsample's bias corrects the target); the caller codes once
        (``(scale, None)``). Formats 1 and 2 code the whole state at every step of the search and return the
        payloads of the best one."""
        if self.version < 3:
            def coded_rate(log_s):
                payloads = [p.encode(math.exp(log_s), weights) for p in prepared]
                return 8 * sum(map(len, payloads)) / max(n_values, 1), payloads

            return self._secant(coded_rate, self.bits, tolerance=0.01)

        memo = {}

        def predicted(log_s, row_every=_SEARCH_ROW_EVERY):
            if (log_s, row_every) not in memo:
                coded = residuals(math.exp(log_s), row_every)
                bits = sum(p.estimate_bits(math.exp(log_s), weights, row_every, coded.get(p)) for p in prepared)
                memo[log_s, row_every] = bits / max(n_values, 1)
            return memo[log_s, row_every], None

        scale, _ = self._secant(predicted, self.bits, tolerance=0.002)
        rate, _ = predicted(math.log(scale), _CHECK_ROW_EVERY)  # what coding gives, within ~0.2%
        if abs(rate / self.bits - 1) > 0.003:  # the subsample's bias (~1%) corrects the target
            bias = rate / predicted(math.log(scale))[0]
            scale, _ = self._secant(predicted, self.bits / bias, tolerance=0.001, start=scale)
        return scale, None

    @staticmethod
    def _secant(rate, target: float, tolerance: float, start: float = 0.5):
        """(scale, extra) with ``rate(log scale) = (bits per value, extra)`` closest to ``target``."""
        lo, hi = (math.log(s) for s in _SCALE_RANGE)
        x0 = math.log(start)
        b0, extra0 = rate(x0)
        if abs(b0 / target - 1) < tolerance:
            return start, extra0
        x1 = min(hi, max(lo, x0 + (b0 - target) * math.log(2)))
        b1, extra1 = rate(x1)
        tried = [(abs(b0 / target - 1), x0, extra0), (abs(b1 / target - 1), x1, extra1)]
        for _ in range(12):
            if min(tried, key=lambda r: r[0])[0] < tolerance or b1 == b0:
                break
            x2 = min(hi, max(lo, x1 + (target - b1) * (x1 - x0) / (b1 - b0)))
            x0, b0 = x1, b1
            x1 = x2
            b1, extra1 = rate(x1)
            tried.append((abs(b1 / target - 1), x1, extra1))
        _, x, extra = min(tried, key=lambda r: r[0])
        return math.exp(x), extra

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
        stream_index = {}
        for t in tensors:
            stream_index.setdefault((t.section, t.stream), len(stream_index))
        decoded = [{} for _ in stream_index]  # per stream: format 4's features
        # each stream's tensors layer by layer, K first: format 4 predicts from the tensors decoded before
        order = sorted(range(len(tensors)), key=lambda i: (stream_index[tensors[i].section, tensors[i].stream],
                                                           tensors[i].layer, tensors[i].kind != "k"))
        for i in order:
            tensor = tensors[i]
            stream = stream_index[tensor.section, tensor.stream]
            pos = per_stream[stream] if per_stream is not None else positions
            pos = np.asarray(pos, dtype=np.int32)
            if len(pos) != tensor.n_cells:
                raise ModelMismatchError(f"decoding {tensor.name}: {len(pos)} cell positions for {tensor.n_cells} cells")
            _decode_tensor(payloads[i], tensor, pos, rope, profile, decoded[stream])
            forget_unused(decoded[stream], tensor.layer)

    def encode(self, buf):  # the generic byte-codec entry points do not apply to a whole state
        raise TypeError("KVLossyCodec codes whole states: use encode_state(state, rope)")

    def decode(self, buf, out=None):
        raise TypeError("KVLossyCodec codes whole states: use decode_state(payloads, tensors, positions, rope)")
