"""A session's KV cut into per-node chunks for the prefix store, and the blob rebuilt from them.

The store (``seqkv_edge.store``) keeps a session as a path of trie nodes; each node owns the
chunk of the tokens on its edge. A chunk is self-contained: the coded tokens of its range
``[start, end)``, the (M-RoPE) cell ext records if the model has them, and every K/V tensor's
rows (token-major) or columns (llama.cpp's transposed V) for those cells, coded with the
lossless KV codec. Chunks of different sessions and different lengths therefore compose: any
root-down path, cut anywhere, rebuilds a valid llama.cpp sequence state.

The state's *skeleton* (headers and cell metadata) is synthesized, not stored: for sessions
driven by the Llama API the cells of sequence 0 are positions ``0..n-1`` with one sequence id,
so the skeleton is a function of ``n`` and the cache layout (types and widths per layer,
v_trans, stream count), which every chunk carries in its header (~5 bytes per tensor). A stored
template would have to be rewritten for every prefix length anyway, and would tie a node to the
session that created it. Cells whose positions are a permutation of ``0..n-1`` are put in
position order on save (attention does not depend on cell order; bit-exact restore holds for the
usual in-order case); anything else (gaps, several sequences) is refused.

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

>>> codec = ChunkCodec()                                                  # doctest: +SKIP
>>> chunks = codec.session_chunks(parse_seq_state(blob, model=llm), tokens, llm.n_vocab(), identity)  # doctest: +SKIP
>>> store.put_session("chat", tokens, chunks.payload)                     # doctest: +SKIP
>>> blob2, tokens2 = codec.rebuild(store.get_payloads(ids), n_tokens, identity)  # doctest: +SKIP
"""
from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..codecs.tokens_portable import TokensPortableCodec
from ..errors import CorruptDataError, ModelMismatchError, UnsupportedStateError
from ..state.blob import GGML_TYPES, SEQ_STATE_MAGIC, SeqState, skeleton_layout

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


def _take_cells(data: np.ndarray, spec, start: int, end: int, order: np.ndarray | None) -> np.ndarray:
    """Cells [start, end) (in position order) of one tensor, as a C-contiguous array."""
    type_id, token_major, n_channels = spec
    if token_major:
        return data[start:end] if order is None else data[order[start:end]]
    el = GGML_TYPES[type_id].type_size
    if order is None:
        return np.ascontiguousarray(data[:, start * el:end * el])
    cells = data.reshape(n_channels, -1, el)[:, order[start:end], :]
    return np.ascontiguousarray(cells.reshape(n_channels, -1))


def _put_cells(dst: np.ndarray, src: np.ndarray, spec, at: int, count: int) -> None:
    """Copy the first ``count`` cells of a decoded chunk tensor into the blob tensor at cell ``at``."""
    type_id, token_major, _ = spec
    if token_major:
        dst[at:at + count] = src[:count]
    else:
        el = GGML_TYPES[type_id].type_size
        dst[:, at * el:(at + count) * el] = src[:, :count * el]


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


class SessionChunks:
    """One parsed session, ready to be cut: ``payload(start, end)`` is the store's PayloadFn."""

    def __init__(self, codec: "ChunkCodec", state: SeqState, tokens: np.ndarray, n_vocab: int, identity: bytes):
        self.codec = codec
        self.layout, stream, window = ChunkLayout.of_state(state, n_vocab, identity)
        self.tokens = np.ascontiguousarray(tokens, dtype=np.int32)
        n = stream.cell_count
        if n != self.tokens.shape[0]:
            raise UnsupportedStateError(f"the state holds {n} cells for {self.tokens.shape[0]} tokens")
        self.order = _position_order(stream.positions, stream.n_seq_id)
        self.ext = None
        if self.layout.has_cell_ext:
            ext = stream.ext.view(np.int32).reshape(n, 3) if stream.ext.dtype.names else stream.ext
            self.ext = ext if self.order is None else ext[self.order]
        self.tensors = [t.data for t in stream.k + stream.v]
        self.specs = self.layout.tensor_specs()
        self.window = None  # the sliding-window section's cells, in position order, as (tensors, cells)
        if window is not None:
            first = n - window.cell_count
            if first < 0 or not np.array_equal(np.sort(window.positions), np.arange(first, n)):
                raise UnsupportedStateError("the sliding-window cells are not the last positions of the session")
            order = _position_order(window.positions - first, window.n_seq_id)
            self.window = ([_take_cells(t.data, spec, 0, window.cell_count, order)
                            for t, spec in zip(window.k + window.v, self.layout.window_specs())], window.cell_count)
        self.payload_bytes = 0  # bytes of every chunk produced so far

    def payload(self, start: int, end: int) -> bytes:
        if not 0 <= start < end <= self.tokens.shape[0]:
            raise ValueError(f"chunk range [{start}, {end}) outside the session's {self.tokens.shape[0]} tokens")
        jobs = [(_take_cells(data, spec, start, end, self.order), spec[0], spec[1], spec[2])
                for data, spec in zip(self.tensors, self.specs)]
        window_cells, window_coded = 0, []
        if self.window is not None and end == self.tokens.shape[0]:  # the session's end: its window is known
            tensors, window_cells = self.window
            jobs += [(data, *spec) for data, spec in zip(tensors, self.layout.window_specs())]
        coded = self.codec.kv.encode_many(jobs)
        if window_cells:
            coded, window_coded = coded[:len(self.specs)], coded[len(self.specs):]
        chunk = _pack_chunk(self.layout, start, self.codec.tokens(self.layout.n_vocab).encode(self.tokens[start:end]),
                            end - start, None if self.ext is None else self.ext[start:end], coded,
                            window_cells, window_coded)
        self.payload_bytes += len(chunk)
        return chunk


def _position_order(positions: np.ndarray, n_seq_id: np.ndarray) -> np.ndarray | None:
    """None when cells hold positions 0..n-1 in order; else the cell order that sorts them."""
    n = positions.shape[0]
    if (n_seq_id != 1).any():
        raise UnsupportedStateError("cells are shared by several sequences; the store keeps one sequence")
    expected = np.arange(n, dtype=positions.dtype)
    if np.array_equal(positions, expected):
        return None
    order = np.argsort(positions, kind="stable")
    if not np.array_equal(positions[order], expected):
        raise UnsupportedStateError(
            "the cache cells do not hold positions 0..n-1 (shifted or edited context); store the tokens instead")
    return order


class ChunkCodec:
    """Codes chunks with the lossless KV codec (threads across tensors) and the portable token codec.

    Args:
        n_threads: threads the KV codec uses (default: all cores).
        kv_codec: an object with ``encode_many``/``decode_many`` (default ``KVLosslessCodec``).
    """

    def __init__(self, n_threads: int | None = None, kv_codec=None):
        if kv_codec is None:
            from ..codecs.kv_lossless import KVLosslessCodec

            kv_codec = KVLosslessCodec(n_threads=n_threads or os.cpu_count() or 1)
        self.kv = kv_codec
        self._token_codecs: dict[int, TokensPortableCodec] = {}

    def tokens(self, n_vocab: int) -> TokensPortableCodec:
        if n_vocab not in self._token_codecs:
            self._token_codecs[n_vocab] = TokensPortableCodec(n_vocab=n_vocab)
        return self._token_codecs[n_vocab]

    def session_chunks(self, state: SeqState, tokens: np.ndarray, n_vocab: int, identity: bytes) -> SessionChunks:
        return SessionChunks(self, state, tokens, n_vocab, identity)

    def _decode_tokens(self, chunk: ParsedChunk) -> np.ndarray:
        codec = self.tokens(chunk.layout.n_vocab)
        tokens = np.asarray(codec.decode(chunk.tokens, max_tokens=chunk.n_tokens), dtype=np.int32)
        if tokens.shape[0] != chunk.n_tokens:
            raise CorruptDataError(f"a KV chunk holds {tokens.shape[0]} tokens, its header says {chunk.n_tokens}")
        return tokens

    def rebuild(self, payloads: Sequence, n_tokens: int, identity: bytes | None = None, *,
                node_ends: Sequence[int] | None = None,
                max_cell_bytes: int | None = None) -> tuple[bytearray, np.ndarray]:
        """The seq-0 state blob and tokens of the first ``n_tokens`` tokens of a root-down node path.

        ``node_ends`` (the trie's end of each node) and ``max_cell_bytes`` (``state.max_cell_bytes`` of
        the live context) bound what the chunk headers may ask to allocate; both are checked first.
        Raises ModelMismatchError when a chunk was made by another model or cache layout than
        ``identity``, CorruptDataError when chunks do not join up or do not decode.
        """
        chunks = [parse_chunk(p) for p in payloads]
        if not chunks or n_tokens <= 0:
            raise ValueError("rebuilding a state needs at least one chunk and one token")
        layout = chunks[0].layout
        if identity is not None and layout.identity != identity:
            raise ModelMismatchError(
                "the stored KV chunks were made with another model or cache layout than this context's; "
                "use one store per model and cache type")
        at = 0
        for i, chunk in enumerate(chunks):
            if chunk.layout != layout or chunk.start != at:
                raise CorruptDataError(f"stored chunks do not join up at token {at} (a chunk starts at {chunk.start})")
            at += chunk.n_tokens
            if node_ends is not None and at != node_ends[i]:
                raise CorruptDataError(f"a stored chunk ends at token {at}, its trie node at {node_ends[i]}")
        if at < n_tokens or at - chunks[-1].n_tokens >= n_tokens:
            raise CorruptDataError(f"chunks hold tokens [0, {at}); {n_tokens} requested")
        if layout.has_window and (n_tokens != at or not chunks[-1].window_cells):
            raise ValueError(f"a sliding-window state is complete only at a stored session end: the last chunk "
                             f"ends at {at}{'' if chunks[-1].window_cells else ' without a window'}, "
                             f"{n_tokens} tokens requested (see complete_prefix)")
        cell_bytes = layout.cell_bytes() + layout.window_cell_bytes()
        if max_cell_bytes is not None and cell_bytes > max_cell_bytes:
            raise CorruptDataError(f"stored KV chunks describe {cell_bytes:,} bytes per cell; this "
                                   f"context's cells hold at most {max_cell_bytes:,}")
        tokens = np.concatenate([self._decode_tokens(c) for c in chunks])[:n_tokens]
        ext = np.concatenate([c.ext for c in chunks])[: 3 * n_tokens] if layout.has_cell_ext else None
        window_cells = chunks[-1].window_cells if layout.has_window else 0
        blob, tensors = skeleton_layout(layout.skeleton(n_tokens, ext, window_cells), has_cell_ext=layout.has_cell_ext,
                                        has_v=layout.has_v)
        specs = layout.tensor_specs()
        jobs, copies = [], []
        for chunk in chunks:
            used = min(chunk.n_tokens, n_tokens - chunk.start)
            for coded, spec, tensor in zip(chunk.kv, specs, tensors):
                if used == chunk.n_tokens and spec[1]:  # a whole token-major chunk: decode in place
                    out = tensor.data[chunk.start:chunk.start + used]
                else:
                    out = np.empty(_cells_shape(spec, chunk.n_tokens), np.uint8)
                    copies.append((tensor.data, out, spec, chunk.start, used))
                jobs.append((coded, spec[0], spec[1], spec[2], out))
        if window_cells:  # the sliding-window section's tensors follow the first section's in the blob
            jobs += [(coded, *spec, tensor.data)
                     for coded, spec, tensor in zip(chunks[-1].window, layout.window_specs(), tensors[len(specs):])]
        self.kv.decode_many(jobs)
        for dst, src, spec, at, count in copies:
            _put_cells(dst, src, spec, at, count)
        return blob, tokens

    def split(self, payload, node_start: int, k: int, node_len: int) -> tuple[bytes, bytes]:
        """The store's SplitFn: decode one chunk, re-code its first ``k`` tokens and the rest."""
        chunk = parse_chunk(payload)
        if chunk.start != node_start or chunk.n_tokens != node_len or not 0 < k < node_len:
            raise CorruptDataError(f"splitting a chunk of tokens [{chunk.start}, {chunk.start + chunk.n_tokens}) "
                                   f"as node [{node_start}, {node_start + node_len}) at {k}")
        tokens = self._decode_tokens(chunk)  # node_len comes from the trie: it bounds what is allocated
        specs = chunk.layout.tensor_specs()
        decoded = [np.empty(_cells_shape(spec, node_len), np.uint8) for spec in specs]
        self.kv.decode_many([(c, s[0], s[1], s[2], out) for c, s, out in zip(chunk.kv, specs, decoded)])
        halves = []
        for a, b in ((0, k), (k, node_len)):
            jobs = [(_take_cells(d, s, a, b, None), s[0], s[1], s[2]) for d, s in zip(decoded, specs)]
            ext = None if chunk.ext is None else chunk.ext[3 * a:3 * b]
            window = (chunk.window_cells, chunk.window) if b == node_len and chunk.window_cells else (0, ())
            halves.append(_pack_chunk(chunk.layout, node_start + a, self.tokens(chunk.layout.n_vocab).encode(tokens[a:b]),
                                      b - a, ext, self.kv.encode_many(jobs), window[0], [bytes(w) for w in window[1]]))
        return halves[0], halves[1]


def complete_prefix(payloads: Sequence, length: int) -> int:
    """How many of a root-down path's chunks to restore for at most ``length`` tokens: all whose nodes end by
    ``length`` for a single-section cache; for a sliding-window cache, up to the deepest one that carries its
    window (0: none)."""
    chunks = [parse_chunk(p) for p in payloads]
    if not chunks or not chunks[0].layout.has_window:
        return len(chunks)
    usable = [i + 1 for i, c in enumerate(chunks) if c.window_cells and c.end <= length]
    return usable[-1] if usable else 0


_default_codec: ChunkCodec | None = None
_default_lock = threading.Lock()


def default_codec() -> ChunkCodec:
    global _default_codec
    with _default_lock:
        if _default_codec is None:
            _default_codec = ChunkCodec()
        return _default_codec


def split_payload(payload, node_start: int, k: int, node_len: int) -> tuple[bytes, bytes]:
    """``SplitFn`` for ``open_store(..., split_payload=split_payload)`` (default codec, all cores)."""
    return default_codec().split(payload, node_start, k, node_len)


def full_to_seq_state(llama_state) -> tuple[bytes, bytes]:
    """Split llama.cpp's whole-context state (``llama_state_get_data``: u32 length + architecture
    name, then the memory section) into ``(arch, seq-0 blob)``. The memory section of a context
    whose cells all belong to sequence 0 is byte-identical to a sequence blob's after its header."""
    buf = memoryview(llama_state).cast("B")
    if len(buf) < 4:
        raise CorruptDataError("llama state is truncated")
    (n,) = _U32.unpack_from(buf, 0)
    if not 0 < n <= 64 or 4 + n > len(buf):
        raise CorruptDataError(f"llama state does not start with an architecture name (length {n})")
    arch = bytes(buf[4:4 + n])
    return arch, struct.pack("<Ii", SEQ_STATE_MAGIC, 0) + buf[4 + n:]


def seq_to_full_state(arch: bytes, seq_blob) -> bytes:
    """The inverse of :func:`full_to_seq_state`: a ``llama_state_set_data`` blob from a seq-0 blob."""
    buf = memoryview(seq_blob).cast("B")
    magic, seq_id = struct.unpack_from("<Ii", buf, 0)
    if magic != SEQ_STATE_MAGIC:
        raise CorruptDataError("not a llama.cpp sequence state")
    return _U32.pack(len(arch)) + arch + buf[8:]
