"""The CRC-32 every file and store record carries: zlib's values, whichever library computes them."""
import os
import zlib

from seqkv_edge.checksum import crc32


def test_crc32_gives_zlibs_values_for_every_length_and_start():
    data = os.urandom(1 << 16)
    for n in (0, 1, 3, 15, 16, 63, 64, 255, 4096, 65535, 1 << 16):
        assert crc32(data[:n]) == zlib.crc32(data[:n])
        assert crc32(data[:n], 0xDEADBEEF) == zlib.crc32(data[:n], 0xDEADBEEF)
    assert crc32(memoryview(data)[7:5000]) == zlib.crc32(data[7:5000])
