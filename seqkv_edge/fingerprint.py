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
from functools import lru_cache

from .errors import CorruptDataError

GGUF_MAGIC = b"GGUF"
SAMPLED_BLOCKS = 16
SAMPLED_BLOCK_BYTES = 4096


def gguf_header_length(path: str) -> int:
    """Byte length of a GGUF file's header: magic, metadata and tensor infos (walked by the native core in a
    read-only mapping of the file, which touches only the header's pages, as llama.cpp maps the model itself)."""
    from .native import require

    ffi, lib = require()
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < 4:
            raise CorruptDataError(f"{path} is not a GGUF file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            length = lib.gguf_header_length(ffi.from_buffer("uint8_t[]", data), len(data))
            magic = data[:4]
    if length > 0:
        return int(length)
    raise CorruptDataError(f"{path} is not a GGUF file" if length < 0 or magic != GGUF_MAGIC
                           else "GGUF header is truncated")


@lru_cache(maxsize=8)
def _model_fingerprint(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    header = gguf_header_length(path)
    with open(path, "rb") as f:
        digest.update(f.read(header))
        digest.update(struct.pack("<Q", size))
        span = max(size - header - SAMPLED_BLOCK_BYTES, 0)
        for i in range(SAMPLED_BLOCKS):
            f.seek(header + span * i // max(SAMPLED_BLOCKS - 1, 1))
            digest.update(f.read(SAMPLED_BLOCK_BYTES))
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
