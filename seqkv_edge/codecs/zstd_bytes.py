"""General-purpose byte codec (zstd) for small side data: headers, cell metadata, token ids."""
from __future__ import annotations

import zstandard

from ..errors import CorruptDataError
from . import register_codec
from .base import Codec


@register_codec
class ZstdCodec(Codec):
    """zstd at a fixed level; ``decode`` refuses frames that do not state their size."""

    codec_id = "zstd"

    def __init__(self, level: int = 19):
        if not 1 <= level <= 22:
            raise ValueError(f"zstd level must be in 1..22, got {level}")
        self.level = level

    def encode(self, buf) -> bytes:
        return zstandard.ZstdCompressor(level=self.level).compress(memoryview(buf).cast("B"))

    def decode(self, buf, out=None) -> bytes:
        try:
            data = zstandard.ZstdDecompressor().decompress(bytes(buf))
        except zstandard.ZstdError as exc:
            raise CorruptDataError(f"zstd stream does not decode: {exc}") from None
        if out is not None:
            memoryview(out).cast("B")[:] = data
            return out
        return data

    def get_config(self) -> dict:
        return {"id": self.codec_id, "level": self.level}
