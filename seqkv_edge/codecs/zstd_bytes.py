"""General-purpose byte codec (zstd) for small side data: headers, cell metadata, token ids."""
from __future__ import annotations

import zstandard

from ..errors import CorruptDataError
from .registry import register_codec
from .base import BytesCodec


@register_codec
class ZstdCodec(BytesCodec):
    """zstd at a fixed level; ``decode`` refuses frames that do not state their size."""

    codec_id = "zstd"

    def __init__(self, level: int = 19):
        if not 1 <= level <= 22:
            raise ValueError(f"zstd level must be in 1..22, got {level}")
        self.level = level

    def encode(self, data) -> bytes:
        return zstandard.ZstdCompressor(level=self.level).compress(memoryview(data).cast("B"))

    def decode(self, buf, *, max_size: int | None = None) -> bytes:
        """The bytes of one frame; a frame that states more than ``max_size`` bytes is refused before anything
        is allocated."""
        data = bytes(buf)
        try:
            size = zstandard.frame_content_size(data)
            if size < 0:
                raise CorruptDataError("zstd frame does not state its size")
            if max_size is not None and size > max_size:
                raise CorruptDataError(f"zstd frame states {size:,} bytes, at most {max_size:,} expected here")
            data = zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
        except zstandard.ZstdError as exc:
            raise CorruptDataError(f"zstd stream does not decode: {exc}") from None
        return data

    def get_config(self) -> dict:
        return {"id": self.codec_id, "level": self.level}
