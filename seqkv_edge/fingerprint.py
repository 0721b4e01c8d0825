"""Model and build fingerprints: what a saved session must match to be restored.

The model fingerprint hashes the GGUF header (all metadata and the tensor layout: names, shapes,
types, offsets) plus a few sampled blocks of tensor data, so it tells apart two fine-tunes of one
architecture without reading a multi-GB file.
"""
from __future__ import annotations

import hashlib
import os
import struct
from functools import lru_cache

from .errors import CorruptDataError

GGUF_MAGIC = b"GGUF"
SAMPLED_BLOCKS = 16
SAMPLED_BLOCK_BYTES = 4096

# GGUF value types -> fixed byte sizes (strings and arrays are handled separately)
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


class _Reader:
    def __init__(self, f):
        self.f = f

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise CorruptDataError("GGUF header is truncated")
        return data

    def u32(self) -> int:
        return struct.unpack("<I", self.read(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.read(8))[0]

    def skip_value(self, value_type: int) -> None:
        if value_type in _SCALAR_SIZES:
            self.f.seek(_SCALAR_SIZES[value_type], os.SEEK_CUR)
        elif value_type == _STRING:
            self.f.seek(self.u64(), os.SEEK_CUR)
        elif value_type == _ARRAY:
            item_type, count = self.u32(), self.u64()
            if item_type in _SCALAR_SIZES:
                self.f.seek(_SCALAR_SIZES[item_type] * count, os.SEEK_CUR)
            else:
                for _ in range(count):
                    self.skip_value(item_type)
        else:
            raise CorruptDataError(f"GGUF header holds unknown value type {value_type}")


def gguf_header_length(path: str) -> int:
    """Byte length of a GGUF file's header: magic, metadata and tensor infos."""
    with open(path, "rb") as f:
        r = _Reader(f)
        if r.read(4) != GGUF_MAGIC:
            raise CorruptDataError(f"{path} is not a GGUF file")
        r.u32()  # version
        n_tensors, n_kv = r.u64(), r.u64()
        for _ in range(n_kv):
            r.read(r.u64())  # key
            r.skip_value(r.u32())
        for _ in range(n_tensors):
            r.read(r.u64())  # name
            n_dims = r.u32()
            f.seek(8 * n_dims + 4 + 8, os.SEEK_CUR)  # dims, type, offset
        return f.tell()


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
