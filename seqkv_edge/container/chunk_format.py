"""The store's KV chunk format: the cache layout every chunk repeats (:class:`ChunkLayout`), and a chunk's bytes
(:func:`parse_chunk` reads them without decoding anything; ``_pack_chunk`` writes them). What goes into a chunk and
how chunks rebuild a state is ``container/chunks.py``.

Chunk format, version 1 (little-endian)::

    b"SKVC" u8 version
    layout   u32 n_vocab | u8 flags (1 v_trans, 2 has_v, 4 cell ext) | u16 n_stream | u16 stream
             | u16 n_k | u16 n_v | per tensor (K layers, then V layers): u8 ggml type, u32 n_channels
             | 8 bytes identity (model fingerprint + cache layout digest)
    u32 start  u32 n_tokens
    u32 len | tokens coded with TokensPortableCodec(n_vocab)
    [n_tokens x 12 bytes cell ext, when flag 4]
    per tensor: u32 len | kv_lossless stream

Chunk format version 2, written for sliding-window (iSWA) models only: as version 1, with layout flag 8 (window)
followed by ``u16 n_k | u16 n_v | per tensor: u8 ggml type, u32 n_channels`` of the sliding-window section right
after the first section's tensor list, and after the last KV stream::

    u32 window_cells  [per window tensor: u32 len | kv_lossless stream]   (window_cells == 0: none)

The window is the sliding-window section's cells ``[end - window_cells, end)`` of the session that ended at the
chunk's end: a sliding-window state is complete only at such an end, so a restore stops at the deepest stored
node that carries one and recomputes the rest.

The store checksums whole chunks; the token and KV streams carry their own checks.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import CorruptDataError, UnsupportedStateError
from ..state.blob import GGML_TYPES, SEQ_STATE_MAGIC, SeqState

CHUNK_MAGIC = b"SKVC"
CHUNK_VERSION = 1  # single-section caches; sliding-window ones are written as WINDOW_VERSION
WINDOW_VERSION = 2
VERSIONS = (CHUNK_VERSION, WINDOW_VERSION)
IDENTITY_BYTES = 8
_V_TRANS, _HAS_V, _CELL_EXT, _WINDOW = 1, 2, 4, 8
_EXT_BYTES = 12  # llama_kv_cell_ext: x, y, tok as int32
_LAYOUT_HEAD = struct.Struct("<IBHHHH")
_TENSOR = struct.Struct("<BI")
_COUNTS = struct.Struct("<HH")
_RANGE = struct.Struct("<II")
_U32 = struct.Struct("<I")
_MAX_VOCAB = 1 << 24  # TokensPortableCodec's bound
# a kv_lossless stream holds >= 3 bytes of side information per channel, or (stored) >= 0.56 bytes per value:
# a chunk that declares more channels than this per stream byte is damaged, refused before decoding
_CHANNELS_PER_STREAM_BYTE = 2


@dataclass(frozen=True)
class ChunkLayout:
    """The cache shape every chunk of a session repeats: enough to synthesize the skeleton."""

    n_vocab: int
    v_trans: bool
    has_v: bool
    has_cell_ext: bool
    n_stream: int
    stream: int
    k: tuple[tuple[int, int], ...]  # per layer: (ggml type id, n_channels)
    v: tuple[tuple[int, int], ...]
    identity: bytes
    window_k: tuple[tuple[int, int], ...] = ()  # the sliding-window section's layers (iSWA models)
    window_v: tuple[tuple[int, int], ...] = ()

    @property
    def has_window(self) -> bool:
        return bool(self.window_k)

    @classmethod
    def of_state(cls, state: SeqState, n_vocab: int, identity: bytes) -> tuple["ChunkLayout", object, object]:
        """The layout of a parsed state and its one stream holding cells (and of the sliding-window section's)."""
        if len(state.sections) > 2:
            raise UnsupportedStateError(
                f"the state has {len(state.sections)} KV sections; the session store keeps one cache, or a cache and "
                "its sliding-window cache (iSWA): save this session to a file instead")
        streams = state.sections[0].streams
        filled = [st for st in streams if st.cell_count]
        if len(filled) != 1:
            raise UnsupportedStateError(f"the state has cells in {len(filled)} streams; the store needs one")
        st = filled[0]
        window = None
        if len(state.sections) == 2:
            window = state.sections[1].streams[st.index] if len(state.sections[1].streams) == len(streams) else None
            if window is None or not window.cell_count or window.v_trans != st.v_trans:
                raise UnsupportedStateError("the sliding-window KV section does not match the first one's streams")
        return cls._of_stream(state, st, window, n_vocab, identity), st, window

    @classmethod
    def _of_stream(cls, state: SeqState, st, window, n_vocab: int, identity: bytes) -> "ChunkLayout":
        if len(identity) != IDENTITY_BYTES:
            raise ValueError(f"identity must be {IDENTITY_BYTES} bytes, got {len(identity)}")
        return cls(
            n_vocab=int(n_vocab), v_trans=bool(st.v_trans), has_v=state.has_v, has_cell_ext=state.has_cell_ext,
            n_stream=len(state.sections[0].streams), stream=st.index,
            k=tuple((t.ggml_type.id, t.n_channels) for t in st.k),
            v=tuple((t.ggml_type.id, t.n_channels) for t in st.v), identity=bytes(identity),
            window_k=() if window is None else tuple((t.ggml_type.id, t.n_channels) for t in window.k),
            window_v=() if window is None else tuple((t.ggml_type.id, t.n_channels) for t in window.v),
        )

    @property
    def version(self) -> int:
        return WINDOW_VERSION if self.has_window else CHUNK_VERSION

    def pack(self) -> bytes:
        flags = ((_V_TRANS if self.v_trans else 0) | (_HAS_V if self.has_v else 0) | (_CELL_EXT if self.has_cell_ext else 0)
                 | (_WINDOW if self.has_window else 0))
        head = _LAYOUT_HEAD.pack(self.n_vocab, flags, self.n_stream, self.stream, len(self.k), len(self.v))
        head += b"".join(_TENSOR.pack(t, c) for t, c in self.k + self.v)
        if self.has_window:
            head += _COUNTS.pack(len(self.window_k), len(self.window_v))
            head += b"".join(_TENSOR.pack(t, c) for t, c in self.window_k + self.window_v)
        return head + self.identity

    @classmethod
    def unpack(cls, buf: memoryview, pos: int, version: int = CHUNK_VERSION) -> tuple["ChunkLayout", int]:
        n_vocab, flags, n_stream, stream, n_k, n_v = _LAYOUT_HEAD.unpack_from(buf, pos)
        pos += _LAYOUT_HEAD.size
        specs = [_TENSOR.unpack_from(buf, pos + i * _TENSOR.size) for i in range(n_k + n_v)]
        pos += (n_k + n_v) * _TENSOR.size
        window, w_k = [], 0
        if flags & _WINDOW:
            if version < WINDOW_VERSION:
                raise CorruptDataError(f"a version {version} KV chunk cannot hold a sliding window")
            w_k, w_v = _COUNTS.unpack_from(buf, pos)
            pos += _COUNTS.size
            window = [_TENSOR.unpack_from(buf, pos + i * _TENSOR.size) for i in range(w_k + w_v)]
            pos += (w_k + w_v) * _TENSOR.size
            if w_k == 0:
                raise CorruptDataError("chunk header describes a sliding window without layers")
        elif version >= WINDOW_VERSION:
            raise CorruptDataError(f"a version {version} KV chunk without a sliding window")
        identity = bytes(buf[pos:pos + IDENTITY_BYTES])
        if (any(t not in GGML_TYPES or c == 0 for t, c in specs + window) or not stream < n_stream or n_k == 0
                or not 1 <= n_vocab <= _MAX_VOCAB):
            raise CorruptDataError("chunk header describes an impossible cache layout")
        layout = cls(n_vocab, bool(flags & _V_TRANS), bool(flags & _HAS_V), bool(flags & _CELL_EXT),
                     n_stream, stream, tuple(specs[:n_k]), tuple(specs[n_k:]), identity,
                     tuple(window[:w_k]), tuple(window[w_k:]))
        return layout, pos + IDENTITY_BYTES

    def cell_bytes(self) -> int:
        """Bytes one cell takes in the state blob: its K and V rows in every layer."""
        return sum(_row_bytes(t, c) for t, c in self.k + self.v)

    def tensor_specs(self) -> list[tuple[int, bool, int]]:
        """(ggml type id, token_major, n_channels) per tensor, in blob order (K layers, then V)."""
        return [(t, True, c) for t, c in self.k] + [(t, not self.v_trans, c) for t, c in self.v]

    def window_specs(self) -> list[tuple[int, bool, int]]:
        """The same for the sliding-window section's tensors."""
        return [(t, True, c) for t, c in self.window_k] + [(t, not self.v_trans, c) for t, c in self.window_v]

    def window_cell_bytes(self) -> int:
        return sum(_row_bytes(t, c) for t, c in self.window_k + self.window_v)

    def skeleton(self, n_cells: int, ext: np.ndarray | None = None, window_cells: int = 0) -> bytes:
        """The seq-0 state blob without tensor payloads for cells at positions 0..n_cells-1 (and, with a sliding
        window, its section's cells at positions n_cells - window_cells .. n_cells - 1)."""
        parts = [struct.pack("<Ii", SEQ_STATE_MAGIC, 0), self._section(0, n_cells, ext, self.k, self.v)]
        if self.has_window:
            window_ext = None if ext is None else ext.reshape(-1, 3)[n_cells - window_cells:]
            parts.append(self._section(n_cells - window_cells, window_cells, window_ext, self.window_k, self.window_v))
        return b"".join(parts)

    def _section(self, first: int, n_cells: int, ext, k, v) -> bytes:
        fields = [("pos", "<i4"), ("n", "<u4")] + ([("ext", "<i4", (3,))] if self.has_cell_ext else []) + [("id", "<i4")]
        cells = np.zeros(n_cells, np.dtype(fields))
        cells["pos"] = np.arange(first, first + n_cells, dtype=np.int32)
        cells["n"] = 1
        if self.has_cell_ext:
            cells["ext"] = ext.reshape(n_cells, 3)
        parts = [_U32.pack(self.n_stream)]
        for s in range(self.n_stream):
            if s != self.stream:
                parts.append(_U32.pack(0))
                continue
            parts += [_U32.pack(n_cells), cells.tobytes(), struct.pack("<II", int(self.v_trans), len(k))]
            parts += [struct.pack("<iQ", t, _row_bytes(t, c)) for t, c in k]
            for t, c in v:
                gtype = GGML_TYPES[t]
                parts.append(struct.pack("<iII", t, gtype.type_size, c) if self.v_trans
                             else struct.pack("<iQ", t, _row_bytes(t, c)))
        return b"".join(parts)


def _row_bytes(type_id: int, n_channels: int) -> int:
    gtype = GGML_TYPES[type_id]
    return n_channels // gtype.block_size * gtype.type_size


def _cells_shape(spec: tuple[int, bool, int], n_cells: int) -> tuple[int, int]:
    type_id, token_major, n_channels = spec
    if token_major:
        return n_cells, _row_bytes(type_id, n_channels)
    return n_channels, n_cells * GGML_TYPES[type_id].type_size


@dataclass
class ParsedChunk:
    layout: ChunkLayout
    start: int
    n_tokens: int
    tokens: memoryview  # coded
    ext: np.ndarray | None
    kv: list[memoryview]  # coded tensors, layout.tensor_specs() order
    window_cells: int = 0  # cells of the sliding window ending at this chunk's end (0: none)
    window: list[memoryview] | None = None  # coded window tensors, layout.window_specs() order

    @property
    def end(self) -> int:
        return self.start + self.n_tokens


def parse_chunk(payload) -> ParsedChunk:
    """Read a chunk's header and locate its streams (nothing is decoded)."""
    buf = memoryview(payload).cast("B")
    try:
        if len(buf) < 5 or bytes(buf[:4]) != CHUNK_MAGIC:
            raise CorruptDataError("not a seqkv KV chunk (bad magic)")
        if buf[4] not in VERSIONS:
            raise CorruptDataError(f"KV chunk format version {buf[4]}; this seqkv_edge reads {VERSIONS}")
        layout, pos = ChunkLayout.unpack(buf, 5, buf[4])
        start, n_tokens = _RANGE.unpack_from(buf, pos)
        pos += _RANGE.size
        pieces = []
        for _ in range(1 + len(layout.k) + len(layout.v)):
            (length,) = _U32.unpack_from(buf, pos)
            pieces.append(buf[pos + 4:pos + 4 + length])
            pos += 4 + length
            if len(pieces) == 1 and layout.has_cell_ext:
                ext = np.frombuffer(buf, "<i4", 3 * n_tokens, pos)
                pos += _EXT_BYTES * n_tokens
        window_cells, window = 0, None
        if layout.has_window:
            (window_cells,) = _U32.unpack_from(buf, pos)
            pos += 4
            if window_cells > start + n_tokens:
                raise CorruptDataError(f"a KV chunk ending at token {start + n_tokens} claims a window of "
                                       f"{window_cells} cells")
            window = []
            for _ in range(len(layout.window_k) + len(layout.window_v) if window_cells else 0):
                (length,) = _U32.unpack_from(buf, pos)
                window.append(buf[pos + 4:pos + 4 + length])
                pos += 4 + length
            pieces += window
        if pos != len(buf) or any(len(p) == 0 for p in pieces):
            raise CorruptDataError(f"KV chunk is {len(buf)} bytes, its sections end at byte {pos}")
        for (_, n_channels), piece in zip(layout.k + layout.v + (layout.window_k + layout.window_v if window else ()),
                                          pieces[1:]):
            if n_channels > _CHANNELS_PER_STREAM_BYTE * len(piece):
                raise CorruptDataError(f"a KV chunk tensor of {n_channels} channels is coded in {len(piece)} bytes")
    except (struct.error, ValueError, IndexError) as error:
        raise CorruptDataError(f"KV chunk is truncated or damaged: {error}") from None
    n_kv = len(layout.k) + len(layout.v)
    return ParsedChunk(layout, start, n_tokens, pieces[0], ext if layout.has_cell_ext else None, pieces[1:1 + n_kv],
                       window_cells, window)


def _pack_chunk(layout: ChunkLayout, start: int, tokens_coded: bytes, n_tokens: int,
                ext: np.ndarray | None, coded: Sequence[bytes], window_cells: int = 0,
                window: Sequence[bytes] = ()) -> bytes:
    parts = [CHUNK_MAGIC, bytes([layout.version]), layout.pack(), _RANGE.pack(start, n_tokens),
             _U32.pack(len(tokens_coded)), tokens_coded]
    if layout.has_cell_ext:
        parts.append(np.ascontiguousarray(ext, "<i4").tobytes())
    for piece in coded:
        parts += [_U32.pack(len(piece)), piece]
    if layout.has_window:
        parts.append(_U32.pack(window_cells))
        for piece in window if window_cells else ():
            parts += [_U32.pack(len(piece)), piece]
    return b"".join(parts)
