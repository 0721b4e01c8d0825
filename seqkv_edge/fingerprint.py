"""Model and build fingerprints: what a saved session must match to be restored.

The model fingerprint hashes the GGUF header (all metadata and the tensor layout: names, shapes,
types, offsets) plus a few sampled blocks of tensor data, so it tells apart two fine-tunes of one
architecture without reading a multi-GB file.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import struct
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator

from .errors import CorruptDataError

GGUF_MAGIC = b"GGUF"
SAMPLED_BLOCKS = 16
SAMPLED_BLOCK_BYTES = 4096


@contextmanager
def _mapped(path: str) -> Iterator[mmap.mmap]:
    """A read-only mapping of the model file (as llama.cpp maps it): only the pages read are read from disk."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < 4:
            raise CorruptDataError(f"{path} is not a GGUF file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            yield data


def _header_length(data: mmap.mmap, path: str) -> int:
    from .native import require

    ffi, lib = require()
    length = lib.gguf_header_length(ffi.from_buffer("uint8_t[]", data), len(data))
    if length > 0:
        return int(length)
    raise CorruptDataError(f"{path} is not a GGUF file" if length < 0 or data[:4] != GGUF_MAGIC
                           else "GGUF header is truncated")


def gguf_header_length(path: str) -> int:
    """Byte length of a GGUF file's header: magic, metadata and tensor infos (walked by the native core)."""
    with _mapped(path) as data:
        return _header_length(data, path)


@lru_cache(maxsize=8)
def _model_fingerprint(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with _mapped(path) as data, memoryview(data) as view:  # the header walked and hashed in one mapping
        header = _header_length(data, path)
        digest.update(view[:header])
        digest.update(struct.pack("<Q", size))
        span = max(size - header - SAMPLED_BLOCK_BYTES, 0)
        for i in range(SAMPLED_BLOCKS):
            start = header + span * i // max(SAMPLED_BLOCKS - 1, 1)
            digest.update(view[start:start + SAMPLED_BLOCK_BYTES])
    return digest.hexdigest()[:32]


def model_fingerprint(path: str) -> str:
    """Hex digest (128 bits) identifying a GGUF model: header, tensor layout, sampled weights."""
    stat = os.stat(path)
    return _model_fingerprint(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


def build_info() -> dict:
    """The llama.cpp build that computes the KV: versions and the CPU features it uses."""
    import llama_cpp

    system = llama_cpp.llama_print_system_info()
    return {
        "llama_cpp_python": llama_cpp.__version__,
        "system_info": system.decode() if isinstance(system, bytes) else str(system),
    }
