"""llama.cpp per-sequence state blobs: read them, parse them into tensor views, rebuild them exactly.

Layout (vendored llama.cpp of llama-cpp-python 0.3.36, DESIGN.md §4): u32 magic 0xaf143cd8, i32 seq_id,
then one KV section per attention cache (iSWA models: two). A section is u32 n_stream and per stream
u32 cell_count; a stream with cells adds cell metadata, u32 v_trans, u32 n_layer, K per layer and V per
layer (V absent for MLA). Tensor payloads become uint8 numpy views into the blob; everything else is the
*skeleton*, from which ``build_seq_state`` reassembles the blob byte for byte:

    >>> blob = read_seq_state(llm.ctx)                                            # doctest: +SKIP
    >>> state = parse_seq_state(blob, model=llm)                                  # doctest: +SKIP
    >>> build_seq_state(state.skeleton(), [t.data for t in state.tensors()]) == blob  # doctest: +SKIP
    True
"""
from __future__ import annotations

import ctypes
import logging
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..errors import (
    CorruptDataError,
    ModelMismatchError,
    SeqKVError,
    UnsupportedStateError,
)

logger = logging.getLogger(__name__)

SEQ_STATE_MAGIC = 0xAF143CD8
_MAX_SEQ = 256  # LLAMA_MAX_SEQ: bounds n_stream, n_seq_id and seq ids
_MAX_ROW_BYTES = 1 << 20  # plausibility bound on one cell's K or V bytes in one layer (real models: < 64 KiB)
_ROPE_TYPES_WITH_CELL_EXT = (8, 40)  # GGML_ROPE_TYPE_MROPE, GGML_ROPE_TYPE_IMROPE: cells keep (x, y, tok)
_CELL_EXT_DTYPE = np.dtype([("x", "<i4"), ("y", "<i4"), ("tok", "<i4")])  # llama_kv_cell_ext
_CELL_BYTES = 24  # a cell's metadata in a seq state: pos, n_seq_id, ext, one seq id


class GGMLType(NamedTuple):
    """A ggml tensor type usable as a KV cache type: ``type_size`` bytes hold ``block_size`` values."""

    id: int
    name: str
    block_size: int
    type_size: int


# ggml.h enum ggml_type, block sizes from ggml-common.h; the types llama.cpp accepts as cache types
GGML_TYPES = {t.id: t for t in (
    GGMLType(0, "f32", 1, 4), GGMLType(1, "f16", 1, 2), GGMLType(30, "bf16", 1, 2),
    GGMLType(2, "q4_0", 32, 18), GGMLType(3, "q4_1", 32, 20), GGMLType(6, "q5_0", 32, 22),
    GGMLType(7, "q5_1", 32, 24), GGMLType(8, "q8_0", 32, 34), GGMLType(20, "iq4_nl", 32, 18),
)}


@dataclass(frozen=True, eq=False)
class KVTensor:
    """One layer's K or V in one stream: a uint8 view into the blob plus the layout a codec needs.

    ``data`` is ``[n_cells, row_bytes]`` when token-major (K, and V without v_trans) or
    ``[n_channels, n_cells * element_bytes]`` when channel-major (``transposed``: V with v_trans).
    ``element_bytes`` hold ``block_size`` values (f16: 2 bytes per value, q8_0: 34 bytes per 32 values).
    """

    name: str  # "kv{section}.s{stream}.l{layer}.{k|v}"
    section: int
    stream: int
    layer: int  # index among the cache's layers (model layer ids are not stored in the blob)
    kind: str  # "k" or "v"
    ggml_type: GGMLType
    transposed: bool
    n_cells: int
    n_channels: int  # values per cell: per row (token-major), or number of rows (channel-major)
    offset: int  # of the payload in the blob
    data: np.ndarray | None  # None in a parse of a skeleton
    depth: int = -1  # the layer's index over every KV section, section 0's first (== layer with one section)

    element_bytes = property(lambda self: self.ggml_type.type_size)
    block_size = property(lambda self: self.ggml_type.block_size)
    token_major = property(lambda self: not self.transposed)
    nbytes = property(lambda self: self.n_cells * self.n_channels // self.block_size * self.element_bytes)


@dataclass(eq=False)
class KVStream:
    """The cells of one stream: metadata arrays, v_trans and per-layer K/V (no layers when empty)."""

    index: int
    cell_count: int
    positions: np.ndarray  # int32 [cell_count]
    n_seq_id: np.ndarray  # uint32 [cell_count]
    seq_ids: np.ndarray  # int32 [n_seq_id.sum()]: the seq ids of all cells, cell after cell
    ext: np.ndarray | None  # (x, y, tok) records [cell_count] when the cache keeps a cell ext (M-RoPE)
    v_trans: bool | None = None
    k: list[KVTensor] = field(default_factory=list)
    v: list[KVTensor] = field(default_factory=list)
    n_layer = property(lambda self: len(self.k))


@dataclass(eq=False)
class KVSection:
    """One attention KV cache (iSWA models write the base cache, then the SWA cache)."""

    index: int
    streams: list[KVStream]
    span: tuple[int, int] = (0, 0)  # (start, end) of the section in the blob


@dataclass(eq=False)
class SeqState:
    """A parsed sequence state; ``spans`` are the (offset, length) of the tensor payloads in blob order."""

    seq_id: int
    sections: list[KVSection]
    spans: list[tuple[int, int]]
    has_cell_ext: bool
    has_v: bool
    blob: memoryview | None  # None when parsed from a skeleton
    arch: str | None = None

    def tensors(self) -> list[KVTensor]:
        """All K/V tensors in blob order (``tensors()[i]`` fills ``spans[i]``)."""
        return [t for sec in self.sections for st in sec.streams for t in st.k + st.v]

    def skeleton(self) -> bytes:
        """The blob without its tensor payloads: headers and cell metadata, concatenated."""
        ends, starts = [0] + [off + n for off, n in self.spans], [off for off, _ in self.spans] + [len(self.blob)]
        return b"".join(self.blob[a:b] for a, b in zip(ends, starts))

    def build(self, payloads=None) -> bytearray:
        """A copy of the blob, with ``payloads`` (bytes-like or arrays, ``tensors()`` order) put in if given."""
        out = bytearray(self.blob)
        for (off, n), piece in zip(self.spans, [] if payloads is None else _payload_views(self.spans, payloads)):
            out[off:off + n] = piece
        return out


class _Reader:
    """Cursor over a blob; in skeleton mode tensor payloads take no room and are only recorded."""

    def __init__(self, buf: memoryview, skeleton: bool):
        self.buf, self.skeleton, self.off, self.spans = buf, skeleton, 0, []
        self.u8 = np.frombuffer(buf, dtype=np.uint8)

    def fail(self, msg: str, cls=CorruptDataError):
        err = cls(f"{msg} (at byte {self.off} of {len(self.buf)})")
        err.offset = self.off
        raise err

    def need(self, n: int, what: str):
        if n > len(self.buf) - self.off:
            self.fail(f"state blob truncated: {what} needs {n} bytes, {len(self.buf) - self.off} left")

    def scalar(self, fmt: str, what: str) -> int:
        self.need(struct.calcsize(fmt), what)
        (value,) = struct.unpack_from(fmt, self.buf, self.off)
        self.off += struct.calcsize(fmt)
        return value

    def payload(self, shape: tuple[int, int], what: str) -> np.ndarray | None:
        nbytes = shape[0] * shape[1]
        self.spans.append((self.off, nbytes))
        if self.skeleton:
            return None
        self.need(nbytes, what)
        self.off += nbytes
        return self.u8[self.off - nbytes:self.off].reshape(shape)


def _read_cells(r: _Reader, count: int, has_ext: bool, seq_id: int) -> tuple:
    """Cell metadata through structured dtypes: one numpy read per run of cells with equal n_seq_id."""
    parts, done, window = [], 0, 256
    while done < count:
        r.need(8, "cell metadata")
        (n,) = struct.unpack_from("<I", r.buf, r.off + 4)
        if seq_id >= 0 and n == 0:
            r.fail("cells without sequence ids: this looks like a recurrent (Mamba/RWKV-style) state; "
                   "only attention KV caches are supported", UnsupportedStateError)
        if n > _MAX_SEQ or (seq_id >= 0 and n != 1):
            r.fail(f"cell {done} claims {n} sequence ids")
        ext = [("ext", _CELL_EXT_DTYPE)] if has_ext else []
        rec = np.dtype([("pos", "<i4"), ("n", "<u4")] + ext + [("ids", "<i4", (n,))])
        k = min(count - done, window, (len(r.buf) - r.off) // rec.itemsize)
        if k == 0:
            r.need(rec.itemsize, "cell metadata")
        cells = np.frombuffer(r.buf, rec, k, r.off)
        other = cells["n"] != n
        run = int(np.argmax(other)) if other.any() else k
        parts.append(cells[:run])
        r.off, done, window = r.off + run * rec.itemsize, done + run, window * 2 if run == k else 256
    cat = (lambda key, dt: np.concatenate([p[key].reshape(-1) for p in parts]) if parts else np.zeros(0, dt))
    seq_ids = cat("ids", np.int32)
    if seq_ids.size and (seq_ids.min() < 0 or seq_ids.max() >= _MAX_SEQ or (seq_id >= 0 and (seq_ids != seq_id).any())):
        r.fail(f"cell sequence ids out of range, or not the blob's seq_id {seq_id}")
    return cat("pos", np.int32), cat("n", np.uint32), seq_ids, cat("ext", _CELL_EXT_DTYPE) if has_ext else None


def _read_layers(r: _Reader, sec: int, st: KVStream, has_v: bool, depth: int = 0):
    v_trans, n_layer = r.scalar("<I", "v_trans"), r.scalar("<I", "n_layer")
    if v_trans > 1 or n_layer == 0 or n_layer * 12 > len(r.buf) - r.off:
        r.fail(f"implausible layer header (v_trans={v_trans}, n_layer={n_layer})")
    st.v_trans, n = bool(v_trans), st.cell_count
    for kind in ("k", "v") if has_v else ("k",):
        for layer in range(n_layer):
            name = f"kv{sec}.s{st.index}.l{layer}.{kind}"
            gtype = GGML_TYPES.get(type_id := r.scalar("<i", f"{name} type"))
            if gtype is None:
                r.fail(f"{name} has ggml type {type_id}, not a KV cache type this version knows "
                       f"({', '.join(t.name for t in GGML_TYPES.values())})", UnsupportedStateError)
            transposed = kind == "v" and st.v_trans
            if transposed:
                el_size, n_channels = r.scalar("<I", f"{name} element size"), r.scalar("<I", f"{name} rows")
                bad_size = el_size != gtype.type_size or not 0 < n_channels * el_size <= _MAX_ROW_BYTES
                if gtype.block_size != 1 or bad_size:
                    r.fail(f"{name}: transposed V of type {gtype.name}, element size {el_size}, {n_channels} rows")
                shape = (n_channels, n * el_size)
            else:
                row_bytes = r.scalar("<Q", f"{name} row size")
                if row_bytes == 0 or row_bytes % gtype.type_size or row_bytes > _MAX_ROW_BYTES:
                    r.fail(f"{name}: row size {row_bytes} is not a whole number of {gtype.name} blocks")
                n_channels, shape = row_bytes // gtype.type_size * gtype.block_size, (n, row_bytes)
            data = r.payload(shape, name)
            tensor = KVTensor(name, sec, st.index, layer, kind, gtype, transposed, n, n_channels, r.spans[-1][0], data,
                              depth + layer)
            (st.k if kind == "k" else st.v).append(tensor)


def _read_section(r: _Reader, index: int, has_ext: bool, has_v: bool, seq_id: int, depth: int = 0) -> KVSection:
    n_stream = r.scalar("<I", "n_stream")
    if not 0 < n_stream <= _MAX_SEQ:
        r.fail(f"section {index} claims {n_stream} streams")
    streams = []
    for s in range(n_stream):
        cell_count = r.scalar("<I", "cell_count")
        streams.append(KVStream(s, cell_count, *_read_cells(r, cell_count, has_ext, seq_id)))
        if cell_count:
            _read_layers(r, index, streams[-1], has_v, depth)
    return KVSection(index, streams)


def _looks_recurrent(r: _Reader) -> bool:
    """llama_memory_recurrent's seq layout: u32 cell_count, cells (i32 pos, u32 n_seq_id = 0),
    u32 s_trans = 0, u32 n_layer, i32 ggml type of the first layer's state."""
    words = np.frombuffer(r.buf, "<u4", min(68, (len(r.buf) - r.off) // 4), r.off)
    c = int(words[0]) if words.size else 0
    if not 0 < c <= 32 or words.size < 2 * c + 4:
        return False
    return bool((words[2:2 * c + 1:2] == 0).all() and words[2 * c + 1] == 0
                and 0 < words[2 * c + 2] <= 4096 and int(words[2 * c + 3]) in GGML_TYPES)


def _parse(buf: memoryview, has_ext: bool, has_v: bool, skeleton: bool) -> SeqState:
    r = _Reader(buf, skeleton)
    if (magic := r.scalar("<I", "magic")) != SEQ_STATE_MAGIC:
        r.off = 0
        r.fail(f"not a llama.cpp sequence state: magic 0x{magic:08x}, expected 0x{SEQ_STATE_MAGIC:08x}")
    seq_id, sections = r.scalar("<i", "seq_id"), []
    while r.off < len(buf) or not sections:
        start = r.off
        if seq_id >= 0 and _looks_recurrent(r):
            r.fail("a recurrent (Mamba/RWKV-style) or hybrid memory section; only attention KV caches are "
                   "supported", UnsupportedStateError)
        try:
            depth = sum(max((len(st.k) for st in sec.streams), default=0) for sec in sections)
            sections.append(_read_section(r, len(sections), has_ext, has_v, seq_id, depth))
            sections[-1].span = (start, r.off)
        except (CorruptDataError, UnsupportedStateError) as err:
            if sections:
                err.args = (f"{len(buf) - start} bytes after KV section {len(sections) - 1} do not parse as another "
                            f"KV section (trailing garbage, or a memory section this version does not know): {err}",)
            raise
    return SeqState(seq_id, sections, r.spans, has_ext, has_v, None if skeleton else buf)


def _parse_any(blob, has_cell_ext, has_v, arch, skeleton: bool) -> SeqState:
    """Try every layout option the caller left open: exactly one must consume the blob exactly."""
    buf, where = memoryview(blob).cast("B"), f" (model arch {arch!r})" if arch else ""
    results, errors = [], []
    for ext in (False, True) if has_cell_ext is None else (has_cell_ext,):
        for v in (True, False) if has_v is None else (has_v,):
            try:
                results.append(_parse(buf, ext, v, skeleton))
            except (CorruptDataError, UnsupportedStateError) as err:
                errors.append(err)
    if len(results) > 1:
        raise UnsupportedStateError(f"sequence state{where} parses in {len(results)} layouts; pass has_cell_ext "
                                    "and has_v (model_state_options tells has_cell_ext) to choose one")
    if not results:  # report the attempt that got furthest
        best = max(errors, key=lambda e: (e.offset, isinstance(e, UnsupportedStateError)))
        raise type(best)(f"cannot parse llama.cpp sequence state{where}: {best}") from best
    state = results[0]
    state.arch = arch
    logger.debug("parsed seq %d state%s: %d bytes, %d sections, %d tensors",
                 state.seq_id, where, len(buf), len(state.sections), len(state.spans))
    return state


def parse_seq_state(blob, *, model=None, arch: str | None = None, has_cell_ext: bool | None = None,
                    has_v: bool | None = None) -> SeqState:
    """Parse a ``llama_state_seq_get_data`` blob into zero-copy tensor views.

    ``model`` (a ``llama_cpp.Llama`` or model pointer) names the architecture in errors, refuses recurrent
    and hybrid models up front and tells whether cells carry the M-RoPE ext; ``arch`` only names it.
    Layout options left as None are detected: exactly one must fit the blob, else UnsupportedStateError
    asks for them. Raises CorruptDataError (truncated, bad magic, trailing bytes, inconsistent sizes) or
    UnsupportedStateError (unknown ggml types; recurrent, hybrid or unknown layouts).
    """
    if model is not None:
        opts = model_state_options(model)
        arch = arch or opts["arch"]
        if opts["memory"] != "kv":
            raise UnsupportedStateError(f"model arch {arch!r} keeps a {opts['memory']} memory; only attention "
                                        "KV cache states can be parsed (store its tokens instead)")
        has_cell_ext = opts["has_cell_ext"] if has_cell_ext is None else has_cell_ext
    return _parse_any(blob, has_cell_ext, has_v, arch, skeleton=False)


def skeleton_layout(skeleton, *, expected_size: int | None = None, has_cell_ext: bool | None = None,
                    has_v: bool | None = None, out=None) -> tuple[bytearray, list[KVTensor]]:
    """Allocate the blob of a ``SeqState.skeleton()``: headers in place, tensor payloads zeroed.

    Returns the blob and its tensors, whose ``data`` are writable views to fill (e.g. decode in place).
    Pass ``expected_size`` (the original blob's length) to refuse a corrupt skeleton before allocating;
    ``out`` (``out(size)``: a writable buffer of ``size`` bytes) to build it in a buffer of the caller's, whose
    tensor payloads are then left as they were.
    """
    state = skeleton_state(skeleton, expected_size=expected_size, has_cell_ext=has_cell_ext, has_v=has_v, out=out)
    return state.blob.obj if out is None else state.blob, state.tensors()


def skeleton_state(skeleton, *, expected_size: int | None = None, has_cell_ext: bool | None = None,
                   has_v: bool | None = None, out=None) -> SeqState:
    """``skeleton_layout`` as a parsed ``SeqState`` of the new blob (``.blob``: a memoryview of it; streams with
    their cell positions, tensors with writable views)."""
    layout = _parse_any(skeleton, has_cell_ext, has_v, None, skeleton=True)
    skel = memoryview(skeleton).cast("B")
    size = len(skel) + sum(n for _, n in layout.spans)
    if expected_size is not None and size != expected_size:
        raise CorruptDataError(f"the state skeleton describes a {size}-byte blob, expected {expected_size} bytes")
    blob = memoryview(bytearray(size) if out is None else out(size)).cast("B")
    if len(blob) != size or blob.readonly:
        raise ValueError(f"out({size}) gave a {'read-only ' if blob.readonly else ''}buffer of {len(blob)} bytes")
    src, dst = 0, 0
    for off, n in layout.spans + [(len(skel), 0)]:
        blob[dst:dst + off - src] = skel[src:off]
        dst, src = dst + off - src + n, off
    return _parse_any(blob, layout.has_cell_ext, layout.has_v, None, skeleton=False)


def build_seq_state(skeleton, payloads, *, has_cell_ext: bool | None = None, has_v: bool | None = None) -> bytearray:
    """Rebuild a blob from ``SeqState.skeleton()`` and the tensor payloads in ``tensors()`` order.

    Payloads are bytes-like objects or C-contiguous arrays of exactly each tensor's ``nbytes``.
    """
    layout = _parse_any(skeleton, has_cell_ext, has_v, None, skeleton=True)
    pieces = _payload_views(layout.spans, payloads)
    blob, tensors = skeleton_layout(skeleton, expected_size=len(memoryview(skeleton).cast("B")) + sum(map(len, pieces)),
                                    has_cell_ext=layout.has_cell_ext, has_v=layout.has_v)
    for tensor, piece in zip(tensors, pieces):
        blob[tensor.offset:tensor.offset + tensor.nbytes] = piece
    return blob


def _payload_views(spans, payloads) -> list[memoryview]:
    payloads = list(payloads)
    if len(payloads) != len(spans):
        raise ValueError(f"expected {len(spans)} tensor payloads, got {len(payloads)}")
    pieces = [memoryview(np.ascontiguousarray(p) if isinstance(p, np.ndarray) else p).cast("B") for p in payloads]
    for i, (piece, (_, n)) in enumerate(zip(pieces, spans)):
        if len(piece) != n:
            raise CorruptDataError(f"tensor payload {i} has {len(piece)} bytes, the state needs {n}")
    return pieces


# --- access through the llama.cpp C API (llama_cpp is imported on first use) ---------------------------

def _lib():
    from llama_cpp import llama_cpp as lib

    return lib


def _ctx_ptr(ctx):
    return ctx.ctx if hasattr(ctx, "ctx") else ctx  # a llama_cpp.Llama or LlamaContext, or the raw pointer


def _model_ptr(model):
    return model.model if hasattr(model, "model") else model


def model_arch(model) -> str:
    """The GGUF ``general.architecture`` of a ``llama_cpp.Llama`` (or model pointer), e.g. ``"qwen2"``."""
    buf = ctypes.create_string_buffer(128)
    n = _lib().llama_model_meta_val_str(_model_ptr(model), b"general.architecture", buf, len(buf))
    return buf.value.decode("utf-8", "replace") if n >= 0 else "unknown"


def model_state_options(model) -> dict:
    """What a model's state layout depends on: ``arch``, ``memory`` ("kv", "recurrent" or "hybrid"),
    ``has_cell_ext`` (M-RoPE cells) and ``n_swa`` (> 0: iSWA, two KV sections)."""
    lib, ptr = _lib(), _model_ptr(model)
    memory = "hybrid" if lib.llama_model_is_hybrid(ptr) else "recurrent" if lib.llama_model_is_recurrent(ptr) else "kv"
    return {"arch": model_arch(model), "memory": memory, "n_swa": int(lib.llama_model_n_swa(ptr)),
            "has_cell_ext": int(lib.llama_model_rope_type(ptr)) in _ROPE_TYPES_WITH_CELL_EXT}


def max_cell_bytes(llm) -> int:
    """The most bytes one cell of a ``llama_cpp.Llama``'s context can take in a sequence state: K and V of
    every layer at the live cache types (heads of the GGUF's key/value length) plus the cell metadata of
    each KV section. Decoders check a file's sizes against it before they allocate."""
    lib, ptr = _lib(), _model_ptr(llm)
    n_embd, n_head = int(lib.llama_model_n_embd(ptr)), max(int(lib.llama_model_n_head(ptr)), 1)
    arch = llm.metadata.get("general.architecture", "")
    head_dims = [int(llm.metadata.get(f"{arch}.attention.{key}_length", n_embd // n_head)) for key in ("key", "value")]
    width = max(n_embd, n_head * max(head_dims))  # values per cell and layer in K, and in V
    params = llm.context_params
    row = max(-(-width // t.block_size) * t.type_size for t in (GGML_TYPES[params.type_k], GGML_TYPES[params.type_v]))
    return int(lib.llama_model_n_layer(ptr)) * 2 * row + 2 * _CELL_BYTES


def read_seq_state(ctx, seq_id: int = 0, out=None) -> bytearray | memoryview:
    """Copy sequence ``seq_id``'s state out of a llama_context into a buffer we own (llama.cpp writes it once).

    ``ctx`` is the raw ``llama_context`` pointer (``llm.ctx``) or a ``llama_cpp.Llama``; seq_id -1 takes the
    whole memory. With ``out`` (a writable buffer, reused when large enough, or ``out(size)`` giving one) a
    memoryview of its head may be returned.
    """
    lib, ptr = _lib(), _ctx_ptr(ctx)
    size = lib.llama_state_seq_get_size(ptr, seq_id)
    if size == 0:
        raise SeqKVError(f"llama_state_seq_get_size failed for seq {seq_id} (see the llama.cpp log)")
    out = out(size) if callable(out) else out
    buf = bytearray(size) if out is None or len(out) < size else out
    written = lib.llama_state_seq_get_data(ptr, (ctypes.c_ubyte * size).from_buffer(buf), size, seq_id)
    if written != size:
        raise SeqKVError(f"llama_state_seq_get_data wrote {written} bytes for seq {seq_id}, expected {size}")
    return buf if len(buf) == size else memoryview(buf)[:size]


def write_seq_state(ctx, blob, seq_id: int = 0) -> None:
    """Load a state blob into sequence ``seq_id`` of a llama_context (``llama_state_seq_set_data``, no copy).

    Raises ModelMismatchError when llama.cpp refuses the blob or leaves part of it unread; the sequence is
    then left empty.
    """
    lib, ptr = _lib(), _ctx_ptr(ctx)
    data = np.frombuffer(blob, dtype=np.uint8)  # also for read-only bytes
    n_read = lib.llama_state_seq_set_data(ptr, data.ctypes.data_as(ctypes.POINTER(ctypes.c_ubyte)), data.size, seq_id)
    if n_read != data.size:
        lib.llama_memory_seq_rm(lib.llama_get_memory(ptr), seq_id, -1, -1)
        why = "refused it" if n_read == 0 else f"read only {n_read} bytes"
        raise ModelMismatchError(
            f"restoring a {data.size}-byte state into seq {seq_id}: llama.cpp {why}. The state was saved with "
            "another model, cache type (type_k/type_v), flash_attn setting or a larger context, or is corrupt; "
            "see the llama.cpp log")
