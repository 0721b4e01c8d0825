"""Unsigned LEB128 integers, the variable-length integers of every seqkv byte format."""
from __future__ import annotations

from ..errors import CorruptDataError


def write_varint(value: int) -> bytes:
    """Unsigned LEB128."""
    if value < 0:
        raise ValueError(f"varint of a negative number: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def read_varint(buf: memoryview, pos: int, what: str = "data") -> tuple[int, int]:
    """Returns ``(value, next_pos)``; a truncated or over-long varint is corrupt data."""
    value = shift = 0
    while pos < len(buf) and shift < 64:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise CorruptDataError(f"{what}: truncated or invalid varint at byte {pos}")
