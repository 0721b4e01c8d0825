"""One tensor of the lossy KV codec (``kv_lossy``): its payload, encoder side (``_Prepared``) and decoder side
(``_decode_tensor``). The codec and its rate control are in ``codecs/kv_lossy/codec.py``.

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
  ``offset + (q * step) @ synthesis[head]`` with the profile's matrices (``profile.KVProfile``), found by
  digest.

Payload format version 3: as version 2; each coded stream (the older cells', then the recent window's) is a
``lossy3`` stream of ``native/lossy3.h`` (static per-channel models in a bit-packed header, then the rANS words),
and the decoder writes ``index * step`` directly.

Payload format version 4: as version 3, plus flags bit 3 (predicted, only with bit 1): the coded components are
the residuals of the profile's inter-layer prediction (``predict``); the decoder adds
``predict(decoded, kind, layer, W, W_out)`` (``W`` and, for a reduced-rank predictor of profile version 3, ``W_out``
from the profile named by the digest; the previous layer's K and V and, for V, the same layer's K, decoded first).
Layer 0's K (nothing before it) is never predicted.

Payload format version 5: the layout of version 4. The arithmetic the decoder repeats (the predictions, the
synthesis bases, the RoPE angles, the Hadamard rotation of quantized caches) runs through ``detmath``: fixed
summation order, one IEEE operation at a time, no libm, so every CPU decodes the same bytes and the encoder's
closed loop predicts exactly what they decode. Versions 1-4 decode through the same code (reproducible on every
CPU from this release on; within float rounding of what earlier releases decoded, whose matrix products
depended on the BLAS kernel of the CPU).

Payload format version 6: the layout and pipeline of version 5; each coded stream is a segment coder stream of
format 2 (``native/segcode.h``: per-channel static models in one table section, then independent segments of
2,048 cells x 64 channels, 32 interleaved rANS lanes each), so CPU threads or GPU threads code it in parallel to
the same bytes. Indices are ``round(x / step)`` with ties away from zero (``segcode.quantize``: one float
multiply by ``1 / step``), and the decoder writes ``index * step``.
"""
from __future__ import annotations

import struct
import threading
from typing import NamedTuple

import numpy as np

from ...detmath import per_head
from ...errors import CorruptDataError, ModelMismatchError
from ...native import check, require
from .. import segcode
from ...state.rope import apply_rope, rope_supported, undo_rope
from ...state.values import rope_head_dim, store_values, tensor_values
from .backend import CpuSegments
from .predict import feature_keys, predict
from .profile import DIGEST_BYTES, KVProfile, profile_for_digest

FORMAT_VERSION = 5
VERSIONS = (1, 2, 3, 4, 5, 6)
_HEADER = struct.Struct("<BBHIIII")
_HEADER2 = struct.Struct("<IeI")  # format 2: n_recent, recent_divisor, recent_coded_bytes
_FLAG_ROPE, _FLAG_ROTATED, _FLAG_RECENT, _FLAG_PREDICTED = 1, 2, 4, 8
N_SINK = 1
# format 2: the last N_RECENT cells (the ones the next tokens attend to most) get steps RECENT_DIVISOR x finer,
# in states of at least 4 * N_RECENT cells
N_RECENT, RECENT_DIVISOR = 128, 4.0
# steps relative to the head rms: V tolerates ~3x the K step for the same KL
_WEIGHT = {"k": 1.0, "v": 3.0}


def _streams(split: int):
    """(rows, step divisor) of a body's two coded streams: the older cells up to ``split``, then the recent window
    (``RECENT_DIVISOR`` x finer steps)."""
    return (slice(0, split), np.float32(1.0)), (slice(split, None), np.float32(RECENT_DIVISOR))


def _recent_rows(version: int, n_body: int) -> int:
    """Cells of the recent window (finer steps): only where older cells dominate."""
    return N_RECENT if version >= 2 and n_body >= 4 * N_RECENT else 0


class _Prepared:
    """A tensor made ready to quantize at any scale: residuals, offsets, head rms, sink rows."""

    def __init__(self, tensor, positions: np.ndarray, rope: dict | None, profile=None, version: int = FORMAT_VERSION,
                 coder=None):
        x = tensor_values(tensor, rope)
        self.version = version
        self.coder = coder if coder is not None else CpuSegments()  # format 6: where the segment coder runs
        # the profile, step weights and predictions know layers by depth: unique over a state's KV sections
        self.kind, self.name, self.layer = tensor.kind, tensor.name, tensor.depth
        self.roped = tensor.kind == "k" and rope_supported(rope)
        if self.roped:
            x = undo_rope(x, positions, rope)
        n_cells, n_ch = x.shape
        head_dim = rope_head_dim(rope, tensor.kind) or n_ch
        self.n_heads = n_ch // head_dim if n_ch % head_dim == 0 else 1
        sink = positions < N_SINK
        self.sink_rows = np.flatnonzero(sink).astype(np.uint32)
        self.sink_values = x[sink].astype(np.float16)
        n_sink = len(self.sink_rows)
        prefix = n_sink and self.sink_rows[-1] == n_sink - 1  # the usual layout: sinks first, the body a view
        body = x[n_sink:] if prefix or not n_sink else x[~sink]
        self.offset = body.mean(axis=0).astype(np.float32) if len(body) else np.zeros(n_ch, np.float32)
        body -= self.offset
        head_dim = n_ch // self.n_heads
        matrices = profile.matrices(self.kind, self.layer, self.n_heads, head_dim) if profile is not None else None
        self.digest = profile.digest if matrices is not None else None
        if matrices is not None and len(body):
            body = per_head(body, matrices[0], self.n_heads)
        self.body = np.ascontiguousarray(body, dtype=np.float32)
        squares = np.einsum("ij,ij->j", self.body, self.body) / max(len(body), 1)
        ms = squares.reshape(self.n_heads, -1).mean(axis=1) if len(body) else np.ones(self.n_heads)
        self.head_rms = np.sqrt(np.maximum(ms, 1e-30)).astype(np.float32)
        self.n_cells, self.n_channels = n_cells, n_ch
        self.n_recent = _recent_rows(version, len(self.body))
        self.n_older = len(self.body) - self.n_recent
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
        return tuple((body[part], inv * div) for part, div in _streams(self.n_older))

    def sample_rows(self, row_every: int) -> np.ndarray:
        """The rows ``estimate_bits(row_every=...)`` reads: every ``row_every``-th of each part."""
        return np.concatenate([np.arange(0, self.n_older, row_every),
                               np.arange(self.n_older, len(self.body), row_every)])

    def reconstruct(self, rows: np.ndarray, scale: float, weights: dict | None, index: np.ndarray | None = None):
        """What the decoder gets back for ``rows`` (body rows ``index``, ascending, default all) coded at ``scale``."""
        ffi, lib = require()
        step = self.steps(scale, weights).astype(np.float32)
        inv = np.float32(1.0) / step
        split = self.n_older if index is None else int(np.searchsorted(index, self.n_older))  # older rows first
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        out = np.empty(rows.shape, np.float32)
        for part, div in _streams(split):
            if rows[part].size and self.version >= 6:
                out[part] = segcode.dequantize(segcode.quantize(rows[part], inv * div), step / div)
            elif rows[part].size:
                lib.lossy3_reconstruct(ffi.from_buffer("float[]", rows[part]), rows[part].shape[0], self.n_channels,
                                       ffi.from_buffer("float[]", inv * div), ffi.from_buffer("float[]", step / div),
                                       ffi.from_buffer("float[]", out[part]))
        return out

    def estimate_bits(self, scale: float, weights: dict | None = None, row_every: int = 1,
                      sample: np.ndarray | None = None) -> float:
        """Format 3 and later: the payload size in bits at ``scale``, from the index statistics of every
        ``row_every``-th cell of the body, or of ``sample`` (format 4: its prediction residuals), those rows
        (``sample_rows(row_every)``) given in their place (no entropy coding)."""
        ffi, lib = require()
        inv = np.float32(1.0) / self.steps(scale, weights).astype(np.float32)
        bits = 8.0 * self.side_bytes
        if sample is None:
            for rows, row_inv in self._parts(inv):
                if rows.size and self.version >= 6:
                    bits += segcode.cost(rows, row_inv, row_every)
                elif rows.size:
                    bits += lib.lossy3_cost(ffi.from_buffer("float[]", rows), rows.shape[0], self.n_channels,
                                            ffi.from_buffer("float[]", row_inv), row_every)
            return bits
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        sampled_older = -(-self.n_older // row_every)  # the sampled rows of the older cells come first
        for (part, div), n_rows in zip(_streams(sampled_older), (self.n_older, self.n_recent)):
            rows, row_inv = sample[part], inv * div
            if rows.size and self.version >= 6:
                bits += segcode.cost_sample(rows, row_inv, n_rows)
            elif rows.size:
                bits += lib.lossy3_cost_sample(ffi.from_buffer("float[]", rows), rows.shape[0], self.n_channels,
                                               ffi.from_buffer("float[]", row_inv), n_rows)
        return bits

    def encode(self, scale: float, weights: dict | None = None, residual: np.ndarray | None = None,
               decoded: bool = False):
        """The payload at ``scale``; format 4: ``residual`` (the closed-loop prediction residual) coded instead
        of the body, flagged as predicted. ``decoded`` (formats 3 and later): ``(payload, rows)`` with the rows
        the decoder gets back for what was coded (as :meth:`reconstruct`, in the same pass)."""
        step = self.steps(scale, weights)
        inv = np.float32(1.0) / step.astype(np.float32)
        rows = self.body if residual is None else residual
        out = np.empty(rows.shape, np.float32) if decoded else None
        if self.version >= 6:
            older, recent = (self._code_rows6(rows[part], inv * div, step.astype(np.float32) / div,
                                              None if out is None else out[part])
                             for part, div in _streams(self.n_older))
        elif self.version >= 3:
            older, recent = (self._code_rows3(rows[part], inv * div, step.astype(np.float32) / div,
                                              None if out is None else out[part])
                             for part, div in _streams(self.n_older))
        elif decoded:
            raise ValueError(f"encoding {self.name}: format {self.version} cannot return the decoded rows")
        else:
            older, recent = (self._code_rows(np.ascontiguousarray(part), row_inv) for part, row_inv in self._parts(inv))
        flags = ((_FLAG_ROPE if self.roped else 0) | (_FLAG_ROTATED if self.digest is not None else 0)
                 | (_FLAG_RECENT if self.n_recent else 0) | (_FLAG_PREDICTED if residual is not None else 0))
        header = _HEADER.pack(self.version, flags, self.n_heads, self.n_cells, self.n_channels,
                              len(self.sink_rows), len(older) + len(recent))
        digest = self.digest if self.digest is not None else b""
        if self.n_recent:
            header += _HEADER2.pack(self.n_recent, RECENT_DIVISOR, len(recent))
        payload = b"".join([header, digest, self.offset.tobytes(), step.tobytes(),
                            self.sink_rows.tobytes(), self.sink_values.tobytes(), older, recent])
        return (payload, out) if decoded else payload

    def _code_rows6(self, rows: np.ndarray, inv: np.ndarray, step: np.ndarray, out: np.ndarray | None) -> bytes:
        """Format 6: quantize ``rows`` (``segcode.quantize``) and segment-code the indices (format 2) on the codec's
        device; ``out`` (if given) receives ``index * step``, what the decoder gets back."""
        if not rows.size:
            return b""
        return self.coder.encode_rows(rows, inv, step, out)

    def _code_rows3(self, rows: np.ndarray, inv: np.ndarray, step: np.ndarray, out: np.ndarray | None) -> bytes:
        """Format 3: quantize ``rows`` with steps ``1 / inv`` and code them (native, static per-channel models);
        ``out`` (if given) receives ``index * step``, what the decoder gets back."""
        if not rows.size:
            return b""
        ffi, lib = require()
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        cap = lib.lossy3_encode_bound(rows.shape[0], self.n_channels)
        coded = _scratch(cap)
        n = lib.lossy3_encode(ffi.from_buffer("float[]", rows), rows.shape[0], self.n_channels,
                              ffi.from_buffer("float[]", inv), ffi.from_buffer("uint8_t[]", coded), cap,
                              ffi.from_buffer("float[]", step),
                              ffi.NULL if out is None else ffi.from_buffer("float[]", out))
        n = check(n, f"encoding {self.name}")
        return coded[:n].tobytes()

    def _code_rows(self, rows: np.ndarray, inv: np.ndarray) -> bytes:
        """Formats 1 and 2: quantize ``rows`` with steps ``1 / inv``, then code them (one adaptive model per column)."""
        if not rows.size:
            return b""
        ffi, lib = require()
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
        n = check(n, f"encoding {self.name}")
        return bytes(memoryview(coded)[:n])


_thread_scratch = threading.local()


def _scratch(n_bytes: int) -> np.ndarray:
    """The calling thread's reusable output buffer of at least ``n_bytes`` (fresh pages cost more than coding)."""
    buf = getattr(_thread_scratch, "buf", None)
    if buf is None or buf.size < n_bytes:
        buf = _thread_scratch.buf = np.empty(max(n_bytes, 1 << 20), np.uint8)
    return buf


def _decode_rows(version: int, coded, n_rows: int, n_ch: int, step: np.ndarray, out: np.ndarray, name: str,
                 coder=None) -> None:
    """Entropy-decode one stream of ``n_rows`` cells and write ``index * step`` into ``out`` (float32 rows)."""
    ffi, lib = require()
    if not n_rows * n_ch and not len(coded):
        return
    if version >= 6:
        if not n_rows * n_ch:
            raise CorruptDataError(f"decoding {name}: {len(coded)} coded bytes for no cells")
        try:
            (coder or CpuSegments()).decode_f32(coded, n_rows, n_ch, np.ascontiguousarray(step, np.float32), out)
        except (CorruptDataError, ValueError) as exc:
            raise CorruptDataError(f"decoding {name}: the segment-coded indices are corrupt ({exc})") from exc
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
    check(rc, f"decoding {name}", {lib.SKV_ERR_CORRUPT: (CorruptDataError, "the entropy-coded indices are corrupt")})


def _decode_tensor(payload, tensor, positions: np.ndarray, rope: dict | None, profile=None,
                   decoded: dict | None = None):
    """Decode one payload into ``tensor``; ``decoded`` (``(kind, layer)`` -> coded-domain rows of the stream's
    tensors decoded so far) gives format 4's predictions their features and receives this tensor's rows. Returns
    the profile it decoded with (None without one). The two steps, :func:`_entropy_decode` and
    :func:`_finish_tensor`, can run apart: the first needs nothing decoded before."""
    return _finish_tensor(_entropy_decode(payload, tensor), tensor, positions, rope, profile, decoded)


class _Body(NamedTuple):
    """A payload's side information and its entropy-decoded body (``index * step`` rows of the non-sink cells)."""

    flags: int
    n_heads: int
    digest: bytes
    offset: np.ndarray
    sink_rows: np.ndarray
    sink_values: memoryview
    body: np.ndarray


def _entropy_decode(payload, tensor, coder=None) -> _Body:
    """Check a payload's header against ``tensor`` and entropy-decode its body (independent of other tensors);
    ``coder``: where format 6's segment coder runs (default: the CPU)."""
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
    if n_sink and (sink_rows.max() >= n_cells or len(np.unique(sink_rows)) != n_sink):
        raise CorruptDataError(f"decoding {tensor.name}: sink rows out of range or repeated")
    n_body, n_older = n_cells - n_sink, n_coded - n_coded_recent
    body = np.empty((n_body, n_ch), np.float32)
    _decode_rows(version, parts[4][:n_older], n_body - n_recent, n_ch, step, body[:n_body - n_recent], tensor.name,
                 coder)
    _decode_rows(version, parts[4][n_older:], n_recent, n_ch, step / np.float32(divisor), body[n_body - n_recent:],
                 tensor.name, coder)
    return _Body(flags, n_heads, digest, offset, sink_rows, parts[3], body)


def _finish_tensor(coded: _Body, tensor, positions: np.ndarray, rope: dict | None, profile=None,
                   decoded: dict | None = None):
    """The rest of :func:`_decode_tensor`: :func:`_predicted` then :func:`_synthesize`."""
    found, body = _predicted(coded, tensor, profile, decoded)
    _synthesize(coded, body, found, tensor, positions, rope)
    return found


def _predicted(coded: _Body, tensor, profile=None, decoded: dict | None = None, split: bool = True):
    """(the profile the payload names or None, its coded-domain rows with format 4's inter-layer prediction added);
    the rows go into ``decoded`` for the tensors predicted from them. This step is the chain a state decodes along;
    what follows (:func:`_synthesize`) the next tensors do not need. ``split`` False: its products in this thread."""
    body, found = coded.body, None
    if coded.digest:
        head_dim = tensor.n_channels // coded.n_heads
        found = profile_for_digest(coded.digest, profile)
        if found.matrices(tensor.kind, tensor.depth, coded.n_heads, head_dim) is None:
            raise ModelMismatchError(f"decoding {tensor.name}: KV profile {found.digest.hex()} has no "
                                     f"{coded.n_heads} x {head_dim} basis for this tensor")
        if coded.flags & _FLAG_PREDICTED:
            _add_prediction(body, tensor, found, decoded or {}, split)
        if decoded is not None:
            decoded[tensor.kind, tensor.depth] = body
    return found, body


def _synthesize(coded: _Body, body: np.ndarray, profile, tensor, positions: np.ndarray, rope: dict | None,
                split: bool = True) -> None:
    """From the coded-domain rows (:func:`_predicted`) to the tensor's values in its cache type: synthesis,
    offsets, sinks, RoPE. ``body`` is left as it is (later tensors may predict from it). ``split`` False: all in
    this thread (one running beside the prediction chain leaves the shared matrix-product threads to the chain)."""
    flags, n_heads = coded.flags, coded.n_heads
    n_cells, n_ch, n_sink = tensor.n_cells, tensor.n_channels, len(coded.sink_rows)
    if profile is not None:  # a new array: the coded-domain rows stay as they are
        body = per_head(body, profile.matrices(tensor.kind, tensor.depth, n_heads, n_ch // n_heads)[1], n_heads,
                        split=split)
    body += coded.offset
    if n_sink:
        x = np.empty((n_cells, n_ch), np.float32)
        sink = np.zeros(n_cells, bool)
        sink[coded.sink_rows] = True
        x[coded.sink_rows] = np.frombuffer(coded.sink_values, np.float16).reshape(n_sink, n_ch)
        x[~sink] = body
    else:
        x = body
    if flags & _FLAG_ROPE:
        if not rope_supported(rope):
            raise ModelMismatchError(f"decoding {tensor.name}: keys were coded without RoPE; the restoring "
                                     "model's rope parameters are needed (rope_params(llm))")
        x = apply_rope(x, positions, rope)
    store_values(tensor, x, rope)


def _add_prediction(body: np.ndarray, tensor, profile: KVProfile, decoded: dict, split: bool = True) -> None:
    """Format 4: add the inter-layer prediction (``predict``) from the tensors decoded before."""
    keys = feature_keys(tensor.kind, tensor.depth)
    if not keys or any(key not in decoded or len(decoded[key]) != len(body) for key in keys):
        raise CorruptDataError(f"decoding {tensor.name}: predicted from {keys}, which the state does not hold "
                               "decoded before it")
    w = profile.predictor(tensor.kind, tensor.depth, sum(decoded[key].shape[1] for key in keys), body.shape[1])
    if w is None:
        raise ModelMismatchError(f"decoding {tensor.name}: KV profile {profile.digest.hex()} has no predictor of "
                                 f"this shape")
    body += predict(decoded, tensor.kind, tensor.depth, *w, split=split)
