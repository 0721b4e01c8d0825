"""CRC-32 of bytes: zlib's polynomial and values, from zlib-ng when it is installed (its folded carry-less
multiply is about ten times faster than the zlib CPython links, ``benchmarks/RESULTS.md``), else from zlib.
Both release the GIL on large buffers."""
from __future__ import annotations

try:
    from zlib_ng.zlib_ng import crc32
except ImportError:  # a platform without a zlib-ng wheel: same values, slower
    from zlib import crc32

__all__ = ["crc32"]
