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

The chunk format (versions 1 and 2) is ``container/chunk_format.py``.


>>> codec = ChunkCodec()                                                  # doctest: +SKIP
>>> chunks = codec.session_chunks(parse_seq_state(blob, model=llm), tokens, llm.n_vocab(), identity)  # doctest: +SKIP
>>> store.put_session("chat", tokens, chunks.payload)                     # doctest: +SKIP
>>> blob2, tokens2 = codec.rebuild(store.get_payloads(ids), n_tokens, identity)  # doctest: +SKIP
"""
from __future__ import annotations

import os
import struct
import threading
from typing import Sequence

import numpy as np

from ..codecs.tokens_portable import TokensPortableCodec
from ..errors import CorruptDataError, ModelMismatchError, UnsupportedStateError
from ..state.blob import GGML_TYPES, SEQ_STATE_MAGIC, SeqState, skeleton_layout
from .chunk_format import _U32, ChunkLayout, ParsedChunk, _cells_shape, _pack_chunk, parse_chunk


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
