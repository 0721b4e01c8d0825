"""Save a llama.cpp context's sequence to a session file and restore it, bit-exactly.

This module joins the pieces: ``state`` (the llama.cpp blob), ``codecs`` (the bytes) and
``container`` (the file). ``seqkv_edge.Llama.save_session`` / ``load_session`` call it.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Union

import numpy as np

from .. import __version__
from ..codecs import BytesCodec, StateCodec, TokensCodec, get_codec
from ..codecs.tokens_zstd import TokensZstdCodec
from ..codecs.zstd_bytes import ZstdCodec
from ..container.session_file import Container, Kind, write_container
from ..errors import CorruptDataError, ModelMismatchError, SeqKVError
from ..fingerprint import build_info, model_fingerprint
from ..state.blob import (
    GGML_TYPES,
    max_cell_bytes,
    parse_seq_state,
    read_seq_state,
    skeleton_state,
)
from ..state.llama_api import state_size
from ..state.swa import write_state
from .base import SessionInfo, reused_buffer, rollback_on_failure, set_tokens
from .timing import Clock

log = logging.getLogger(__name__)

_STATE_HEADER_BYTES = 1 << 16  # a state's headers beside its cells: magic, streams, per-layer types and sizes
_HEAD_LAYOUT = ("n_head_kv", "head_dim_k", "head_dim_v", "n_rot")  # what the lossy decoder sizes its work by


# the skeleton's zstd level: level 19 saved a few bytes of a file of megabytes for milliseconds of every save
SKELETON_LEVEL = 9


def _tensor_meta(tensor) -> dict:
    return {
        "name": tensor.name,
        "ggml_type": tensor.ggml_type.id,
        "token_major": tensor.token_major,
        "n_cells": tensor.n_cells,
        "n_channels": tensor.n_channels,
        "nbytes": tensor.nbytes,
    }


def _gpu(config, llm):
    """The GPU backend that codes this save (lossy only) and the buffer to read the state into (page-locked, with
    CUDA), or None for either."""
    if config.kv != "lossy" or config.device == "cpu":
        return None, None
    from ..codecs.kv_lossy.backend import gpu_for_state

    size = state_size(llm)
    gpu = gpu_for_state(config.device, size)
    return gpu, gpu.host_buffer(size) if hasattr(gpu, "host_buffer") else None


def _kv_codec(config, gpu=None) -> StateCodec:
    """The settings' KV codec; lossy states a GPU codes (``gpu``: its backend) are written in format 6, the form
    its kernels code (every CPU decodes it)."""
    if config.kv == "lossy":
        from ..codecs.kv_lossy.codec import FORMAT_VERSION, KVLossyCodec

        from ..codecs.kv_lossy.backend import LOSSY_FORMAT

        version = LOSSY_FORMAT if gpu is not None else FORMAT_VERSION
        return KVLossyCodec(bits=config.bits, max_kl=config.max_kl, device=config.device, version=version)
    from ..codecs.kv_lossless import KVLosslessCodec

    return KVLosslessCodec(n_threads=config.threads)


def save(llm, path: Union[str, Path], config) -> SessionInfo:
    """Write ``llm``'s sequence 0 to ``path`` atomically as a KV snapshot (``config``: the ``SeqKV`` settings)."""
    clock = Clock()
    gpu, buffer = _gpu(config, llm)
    blob = read_seq_state(llm.ctx, out=buffer if buffer is not None else lambda size: reused_buffer(llm, "state", size))
    state = parse_seq_state(blob, model=llm)
    clock.lap("read_state")
    n_tokens = llm.n_tokens
    if n_tokens == 0:
        raise SeqKVError("saving a session: the context holds no tokens yet; evaluate or generate first")
    n_cells = sum(st.cell_count for sec in state.sections[:1] for st in sec.streams)
    if n_cells != n_tokens:
        raise SeqKVError(
            f"saving a session: the context holds {n_cells} cells but the Llama tracks {n_tokens} tokens; "
            "sessions are saved from contexts driven by the Llama API (eval/generate/create_completion)"
        )
    kv_codec, rope, profile = _kv_codec(config, gpu), None, None
    if kv_codec.needs_model:
        from ..state.rope import rope_params

        rope = rope_params(llm)
        if config.model_profile:
            from ..calibrate.profile import load_or_build_profile

            profile = load_or_build_profile(llm)
    coded = kv_codec.encode_state_iter(state, rope, profile=profile)  # lossless: coding in threads from here on
    if profile is not None:
        keep_profile_beside(path, profile)
    side, tokens_codec = ZstdCodec(level=SKELETON_LEVEL), TokensZstdCodec(n_vocab=llm.n_vocab())
    skeleton = side.encode(state.skeleton())
    coded_tokens = tokens_codec.encode(llm.input_ids[:n_tokens])
    codecs = {"kv": kv_codec.get_config(), "tokens": tokens_codec.get_config(), "skeleton": side.get_config()}
    meta = _session_meta(llm, state, len(blob), codecs, rope)
    if profile is not None:
        meta["profile"] = profile.digest.hex()

    def sections():
        yield Kind.TOKENS, coded_tokens
        yield Kind.SKELETON, skeleton
        for payload in coded:  # each written as it comes: "encode" holds the writes, "write" the rest of the flush
            yield Kind.KV, payload
        clock.lap("encode")

    try:
        file_bytes = write_container(path, meta, sections())
    finally:
        getattr(coded, "close", lambda: None)()  # after a failure: the codings not started are cancelled
    clock.lap("write")
    return SessionInfo(str(path), n_tokens, len(blob), file_bytes, clock.seconds)


PROFILES_BESIDE = ".seqkv_profiles"  # beside the session files: the KV profiles their lossy payloads name


def keep_profile_beside(path, profile) -> None:
    """Keep a copy of ``profile`` in the session file's folder (once per profile, content-addressed), so the
    folder restores on another machine with only the model: the profile is derived from the model on the
    machine that saved, and another CPU or llama.cpp build would derive other bits."""
    beside = Path(path).parent / PROFILES_BESIDE / f"{profile.digest.hex()}.npz"
    if not beside.is_file():
        beside.parent.mkdir(exist_ok=True)
        profile.save(beside)


def _profile_beside(source: str, meta: dict):
    """The profile a file's META names, from its folder's copies; None when it names none or there is none."""
    from ..codecs.kv_lossy.profile import DIGEST_BYTES, load_profile_file, parse_digest

    named = meta.get("profile")
    if named is None:
        return None
    digest = parse_digest(named)
    if digest is None:
        raise CorruptDataError(f"{source}: META names KV profile {named!r}, not a {DIGEST_BYTES}-byte hex digest")
    beside = Path(source).parent / PROFILES_BESIDE / f"{named}.npz"
    return load_profile_file(beside, digest) if beside.is_file() else None


def _session_meta(llm, state, state_bytes: int, codecs: dict, rope) -> dict:
    """The JSON META of a snapshot file: what it was saved from and how to decode it."""
    tensors = state.tensors()
    return {
        "seqkv_edge": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"fingerprint": model_fingerprint(llm.model_path), "arch": state.arch,
                  "name": llm.metadata.get("general.name", ""), "path": str(llm.model_path)},
        "build": build_info(),
        "n_tokens": llm.n_tokens,
        "state_bytes": state_bytes,
        "layout": {"has_cell_ext": state.has_cell_ext, "has_v": state.has_v},
        "rope": rope,
        "cache": {
            "k_types": sorted({t.ggml_type.name for t in tensors if t.kind == "k"}),
            "v_types": sorted({t.ggml_type.name for t in tensors if t.kind == "v"}),
            "v_trans": any(not t.token_major for t in tensors if t.kind == "v"),
        },
        "codecs": codecs,
        "tensors": [_tensor_meta(t) for t in tensors],
    }


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
    _check_sizes(container.meta, llm, source)
    saved_cache, live_cache = container.meta.get("cache", {}), live_cache_layout(llm)
    if any(saved_cache.get(key) != value for key, value in live_cache.items()):
        raise ModelMismatchError(
            f"{source} holds a KV cache of {_describe_cache(saved_cache)}; this context keeps "
            f"{_describe_cache(live_cache)}. Create the Llama with matching type_k/type_v and flash_attn "
            "(flash attention stores V untransposed)."
        )


def _check_sizes(meta: dict, llm, source: str) -> None:
    """Refuse sizes the live model cannot hold, before decoding allocates by them (only snapshot files
    have them; a named session's record has none)."""
    if "state_bytes" in meta:
        limit = meta["n_tokens"] * max_cell_bytes(llm) + _STATE_HEADER_BYTES
        if meta["state_bytes"] > limit:
            raise CorruptDataError(f"{source} describes a {meta['state_bytes']:,}-byte state for {meta['n_tokens']} "
                                   f"tokens; a state of that many tokens of this model takes at most {limit:,} bytes")
    if _decodes_by_heads(meta):
        from ..state.rope import rope_params

        saved, live = meta.get("rope") or {}, rope_params(llm)
        if any(saved.get(key) != live[key] for key in _HEAD_LAYOUT):
            raise ModelMismatchError(f"{source} describes heads {_heads(saved)}; this model has {_heads(live)}")


def _decodes_by_heads(meta: dict) -> bool:
    """Whether the KV codec a META names decodes by the model's heads and RoPE (then the live model's must match);
    a damaged or unknown codec config is left for decoding to refuse."""
    try:
        codec = get_codec(meta.get("codecs", {}).get("kv"))
    except CorruptDataError:
        return False
    return isinstance(codec, StateCodec) and codec.needs_model


def _heads(rope: dict) -> str:
    return ", ".join(f"{key}={rope.get(key)}" for key in _HEAD_LAYOUT)


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


def decode_state(container: Container, source: str, out=None, device: str = "auto") -> tuple[bytearray, np.ndarray]:
    """Decode a session file's tokens and rebuild its llama.cpp state blob (tensors decoded in place; in
    ``out(size)``, a writable buffer, when given: then the blob returned is a memoryview of it)."""
    meta, codecs = container.meta, container.meta.get("codecs", {})
    tokens = _decode_bounded(codecs["tokens"], container.payload(Kind.TOKENS), meta["n_tokens"], source)
    if len(tokens) != meta["n_tokens"]:
        raise CorruptDataError(f"{source}: {len(tokens)} tokens decoded, the header says {meta['n_tokens']}")
    skeleton = _decode_bounded(codecs["skeleton"], container.payload(Kind.SKELETON), meta["state_bytes"], source)
    state = skeleton_state(skeleton, expected_size=meta["state_bytes"], out=out, **meta.get("layout", {}))
    blob, tensors = state.blob if out is not None else state.blob.obj, state.tensors()
    if len(tensors) != len(meta["tensors"]):
        raise CorruptDataError(f"{source}: {len(meta['tensors'])} KV tensors described for {len(tensors)} tensors in "
                               "the state layout")
    coded = container.arriving(Kind.KV, len(tensors))  # of a file still being read: each as soon as it is in
    for tensor, described in zip(tensors, meta["tensors"]):
        if _tensor_meta(tensor) != described:
            raise CorruptDataError(f"{source}: tensor {described.get('name')} does not match the state layout")
    kv_codec = get_codec(codecs["kv"])
    if not isinstance(kv_codec, StateCodec):
        raise CorruptDataError(f"{source}: codec {codecs['kv']['id']!r} does not code KV tensors")
    if hasattr(kv_codec, "device"):
        kv_codec.device = device  # where lossy format 6 decodes; not part of its config
    streams = [st for sec in state.sections for st in sec.streams]
    try:
        kv_codec.decode_state(coded, tensors, [st.positions for st in streams if st.cell_count], meta.get("rope"),
                              profile=_profile_beside(source, meta) if kv_codec.needs_model else None)
    except (ValueError, IndexError, TypeError, KeyError) as exc:  # payload fields a decoder trusted
        raise CorruptDataError(f"{source}: a KV payload does not decode ({type(exc).__name__}: {exc})") from None
    container.complete()  # the whole file verified before the context is touched
    return blob, tokens


def _decode_bounded(config: dict, payload, limit: int, source: str):
    """Decode a side section with the codec its config names, refusing more than ``limit`` items."""
    codec = get_codec(config)
    if isinstance(codec, TokensCodec):
        return codec.decode(payload, max_tokens=limit)
    if isinstance(codec, BytesCodec):
        return codec.decode(payload, max_size=limit)
    raise CorruptDataError(f"{source}: codec {config['id']!r} does not code this section")


def load(llm, path: Union[str, Path], container: Container, device: str = "auto") -> SessionInfo:
    """Restore the snapshot file ``path`` (its ``container``, read or arriving) into ``llm``'s sequence 0. The file
    is checked and decoded whole before the context is touched; writing it in runs under ``base.rollback_on_failure``
    (so a damaged or foreign file costs no copy of the live state)."""
    clock = Clock()
    source = str(path)
    check_model(container, llm, source)
    clock.lap("check")
    blob, tokens = decode_state(container, source, out=lambda size: reused_buffer(llm, "state", size), device=device)
    if len(tokens) and not 0 <= int(tokens.min()) <= int(tokens.max()) < llm.n_vocab():
        raise CorruptDataError(f"{source}: a token id lies outside this model's vocabulary of {llm.n_vocab()}")
    clock.lap("decode")
    with rollback_on_failure(llm):
        write_state(llm, blob)
        set_tokens(llm, tokens)
    clock.lap("set_state")
    return SessionInfo(source, len(tokens), len(blob), Path(path).stat().st_size, clock.seconds,
                       restored_by="snapshot")
