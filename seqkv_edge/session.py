"""Save a llama.cpp context's sequence to a session file and restore it, bit-exactly.

This module joins the pieces: ``state`` (the llama.cpp blob), ``codecs`` (the bytes) and
``container`` (the file). ``seqkv_edge.Llama.save_session`` / ``load_session`` call it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Union

import numpy as np

from . import __version__
from .codecs import get_codec
from .codecs.kv_lossless import KVLosslessCodec
from .codecs.zstd_bytes import ZstdCodec
from .config import SeqKV
from .container import Container, Kind, read_container, write_container
from .errors import CorruptDataError, ModelMismatchError, SeqKVError
from .fingerprint import build_info, model_fingerprint
from .state import GGML_TYPES, parse_seq_state, read_seq_state, skeleton_layout, write_seq_state

log = logging.getLogger(__name__)


@dataclass
class SessionInfo:
    """What a save or a restore did: sizes and the seconds each step took."""

    path: str
    n_tokens: int
    raw_bytes: int  # llama.cpp's own sequence state for the same cells
    file_bytes: int
    seconds: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.file_bytes if self.file_bytes else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": round(self.ratio, 5)}


def _tensor_meta(tensor) -> dict:
    return {
        "name": tensor.name,
        "ggml_type": tensor.ggml_type.id,
        "token_major": tensor.token_major,
        "n_cells": tensor.n_cells,
        "n_channels": tensor.n_channels,
        "nbytes": tensor.nbytes,
    }


def _kv_codec(config: SeqKV) -> KVLosslessCodec:
    return KVLosslessCodec(n_threads=config.threads)


def save(llm, path: Union[str, Path], config: SeqKV) -> SessionInfo:
    """Write ``llm``'s sequence 0 (KV cells and tokens) to ``path`` atomically."""
    clock = _Clock()
    blob = read_seq_state(llm.ctx)
    state = parse_seq_state(blob, model=llm)
    clock.lap("read_state")
    n_tokens = llm.n_tokens
    if n_tokens == 0:
        raise SeqKVError("saving a session: the context holds no tokens yet; evaluate or generate first")
    tensors = state.tensors()
    n_cells = sum(st.cell_count for sec in state.sections[:1] for st in sec.streams)
    if n_cells != n_tokens:
        raise SeqKVError(
            f"saving a session: the context holds {n_cells} cells but the Llama tracks {n_tokens} tokens; "
            "sessions are saved from contexts driven by the Llama API (eval/generate/create_completion)"
        )
    kv_codec = _kv_codec(config)
    coded = kv_codec.encode_many([(t.data, t.ggml_type.id, t.token_major, t.n_channels) for t in tensors])
    side = ZstdCodec(level=19)
    tokens = np.ascontiguousarray(llm.input_ids[:n_tokens], dtype="<i4")
    skeleton = side.encode(state.skeleton())
    coded_tokens = side.encode(tokens.tobytes())
    clock.lap("encode")
    meta = {
        "seqkv_edge": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"fingerprint": model_fingerprint(llm.model_path), "arch": state.arch,
                  "name": llm.metadata.get("general.name", ""), "path": str(llm.model_path)},
        "build": build_info(),
        "n_tokens": n_tokens,
        "state_bytes": len(blob),
        "layout": {"has_cell_ext": state.has_cell_ext, "has_v": state.has_v},
        "cache": {
            "k_types": sorted({t.ggml_type.name for t in tensors if t.kind == "k"}),
            "v_types": sorted({t.ggml_type.name for t in tensors if t.kind == "v"}),
            "v_trans": any(not t.token_major for t in tensors if t.kind == "v"),
        },
        "codecs": {"kv": kv_codec.get_config(), "tokens": side.get_config(), "skeleton": side.get_config()},
        "tensors": [_tensor_meta(t) for t in tensors],
    }
    sections = [(Kind.TOKENS, coded_tokens), (Kind.SKELETON, skeleton)] + [(Kind.KV, c) for c in coded]
    file_bytes = write_container(path, meta, sections)
    clock.lap("write")
    return SessionInfo(str(path), n_tokens, len(blob), file_bytes, clock.seconds)


def check_model(container: Container, llm, source: str) -> None:
    """Refuse a session saved with another model (before anything is decoded or touched)."""
    saved = container.meta.get("model", {})
    live = model_fingerprint(llm.model_path)
    if saved.get("fingerprint") != live:
        raise ModelMismatchError(
            f"{source} was saved with model {saved.get('name') or '?'} ({saved.get('path', '?')}, fingerprint "
            f"{saved.get('fingerprint')}); this Llama runs {llm.model_path} (fingerprint {live}). "
            "Load it with the model it was saved with."
        )
    n_tokens = container.meta.get("n_tokens", 0)
    if n_tokens > llm.n_ctx():
        raise ModelMismatchError(f"{source} holds {n_tokens} tokens but this context has n_ctx={llm.n_ctx()}")
    saved_cache, live_cache = container.meta.get("cache", {}), live_cache_layout(llm)
    if any(saved_cache.get(key) != value for key, value in live_cache.items()):
        raise ModelMismatchError(
            f"{source} holds a KV cache of {_describe_cache(saved_cache)}; this context keeps "
            f"{_describe_cache(live_cache)}. Create the Llama with matching type_k/type_v and flash_attn "
            "(flash attention stores V untransposed)."
        )


def live_cache_layout(llm) -> dict:
    """The cache types and V layout a ``llama_cpp.Llama`` context uses (as recorded in session files)."""
    import llama_cpp

    params = llm.context_params
    return {
        "k_types": [GGML_TYPES[params.type_k].name],
        "v_types": [GGML_TYPES[params.type_v].name],
        "v_trans": params.flash_attn_type != llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    }


def _describe_cache(cache: dict) -> str:
    return f"K {'/'.join(cache.get('k_types', ['?']))}, V {'/'.join(cache.get('v_types', ['?']))}, " + (
        "V transposed (flash_attn=False)" if cache.get("v_trans") else "V by rows (flash_attn=True)"
    )


def decode_state(container: Container, source: str) -> tuple[bytearray, np.ndarray]:
    """Decode a session file's tokens and rebuild its llama.cpp state blob (tensors decoded in place)."""
    meta, codecs = container.meta, container.meta.get("codecs", {})
    tokens_bytes = get_codec(codecs["tokens"]).decode(container.payload(Kind.TOKENS))
    tokens = np.frombuffer(tokens_bytes, dtype="<i4")
    if len(tokens) != meta["n_tokens"]:
        raise CorruptDataError(f"{source}: {len(tokens)} tokens decoded, the header says {meta['n_tokens']}")
    skeleton = get_codec(codecs["skeleton"]).decode(container.payload(Kind.SKELETON))
    blob, tensors = skeleton_layout(skeleton, expected_size=meta["state_bytes"], **meta.get("layout", {}))
    coded = container.payloads(Kind.KV)
    if len(coded) != len(tensors) or len(tensors) != len(meta["tensors"]):
        raise CorruptDataError(f"{source}: {len(coded)} KV sections for {len(tensors)} tensors in the state layout")
    for tensor, described in zip(tensors, meta["tensors"]):
        if _tensor_meta(tensor) != described:
            raise CorruptDataError(f"{source}: tensor {described.get('name')} does not match the state layout")
    kv_codec = get_codec(codecs["kv"])
    kv_codec.decode_many([(c, t.ggml_type.id, t.token_major, t.n_channels, t.data) for c, t in zip(coded, tensors)])
    return blob, tokens


def load(llm, path: Union[str, Path], config: SeqKV) -> SessionInfo:
    """Restore a session file into ``llm`` (sequence 0). On any error the context is left as it was."""
    clock = _Clock()
    source = str(path)
    container = read_container(path)
    check_model(container, llm, source)
    clock.lap("read_file")
    blob, tokens = decode_state(container, source)
    clock.lap("decode")
    previous = read_seq_state(llm.ctx) if llm.n_tokens else None
    try:
        write_seq_state(llm.ctx, blob)
    except SeqKVError:
        if previous is not None:
            write_seq_state(llm.ctx, previous)
        raise
    n = len(tokens)
    llm.input_ids[:n] = tokens
    llm.n_tokens = n
    llm._requires_eval = True  # no logits are stored: the next generate() replays the last token
    clock.lap("set_state")
    file_bytes = Path(path).stat().st_size
    return SessionInfo(source, n, len(blob), file_bytes, clock.seconds)


class _Clock:
    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.seconds: dict = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self.last, 4)
        self.seconds["total"] = round(now - self.start, 4)
        self.last = now
