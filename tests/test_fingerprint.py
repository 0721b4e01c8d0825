"""The GGUF header walk behind model fingerprints (native/gguf.c): the same length as a plain reading of the format,
and every damaged header refused without reading past the file."""
from __future__ import annotations

import struct

import pytest

from seqkv_edge.errors import CorruptDataError
from seqkv_edge.fingerprint import gguf_header_length, model_fingerprint

SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


def string(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def value(vtype: int, v) -> bytes:
    if vtype in SCALARS:
        return struct.pack(SCALARS[vtype], v)
    if vtype == STRING:
        return string(v)
    item, items = v
    return struct.pack("<IQ", item, len(items)) + b"".join(value(item, x) for x in items)


def header(kvs, tensors=(("t0", (4, 3)), ("t1", (7,)))) -> bytes:
    """A GGUF v3 header: metadata (key, type, value) and tensor infos (name, dims)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for key, vtype, v in kvs:
        out += string(key.encode()) + struct.pack("<I", vtype) + value(vtype, v)
    for name, dims in tensors:
        out += string(name.encode()) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", 0, 0)
    return out


EVERY_TYPE = [(f"k{t}", t, 1) for t in SCALARS] + [
    ("name", STRING, b"tiny"),
    ("vocab", ARRAY, (STRING, [b"a", b"", b"token" * 20] * 50)),
    ("scores", ARRAY, (6, [0.5] * 33)),
    ("nested", ARRAY, (ARRAY, [(4, [1, 2, 3]), (STRING, [b"x", b"yz"])])),
]


def write(tmp_path, data: bytes, tail: bytes = b"\0" * 64):
    path = tmp_path / "m.gguf"
    path.write_bytes(data + tail)
    return str(path)


def test_the_walk_ends_where_the_header_ends(tmp_path):
    data = header(EVERY_TYPE)
    assert gguf_header_length(write(tmp_path, data)) == len(data)


def test_the_tiny_models_header_and_fingerprint(tiny_model_path):
    with open(tiny_model_path, "rb") as f:
        magic, _, n_tensors, n_kv = struct.unpack("<4sIQQ", f.read(24))
    assert magic == b"GGUF" and n_tensors > 0 and n_kv > 0
    assert 24 < gguf_header_length(tiny_model_path) < len(open(tiny_model_path, "rb").read())
    assert model_fingerprint(tiny_model_path) == model_fingerprint(tiny_model_path)


def test_every_cut_of_a_header_is_refused(tmp_path):
    data = header(EVERY_TYPE)
    for cut in [4, 5, 23, 24, 30] + list(range(40, len(data), 97)) + [len(data) - 1]:
        with pytest.raises(CorruptDataError):
            gguf_header_length(write(tmp_path, data[:cut], tail=b""))


@pytest.mark.parametrize("kvs,why", [
    ([("bad", 13, None)], "unknown value type"),
    ([("deep", ARRAY, (ARRAY, [(ARRAY, [(ARRAY, [(ARRAY, [(ARRAY, [(4, [1])])])])])]))], "arrays nested too deep"),
])
def test_headers_that_are_not_gguf_are_refused(tmp_path, kvs, why):
    if kvs[0][2] is None:
        data = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + string(b"bad") + struct.pack("<I", 13)
    else:
        data = header(kvs)
    with pytest.raises(CorruptDataError, match="not a GGUF file"):
        gguf_header_length(write(tmp_path, data))


def test_counts_beyond_the_file_end_the_walk(tmp_path):
    """An array claiming 2^62 strings, or 2^62 four-byte items, runs out of file: refused, at once."""
    for item in (STRING, 4):
        data = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + string(b"v") + struct.pack("<IIQ", ARRAY, item, 1 << 62)
        with pytest.raises(CorruptDataError, match="truncated"):
            gguf_header_length(write(tmp_path, data + b"\0" * 4096, tail=b""))
    with pytest.raises(CorruptDataError, match="not a GGUF file"):
        gguf_header_length(write(tmp_path, b"GGML" + b"\0" * 100))
