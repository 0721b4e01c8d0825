"""Seeded mutation fuzzing of every parser a file or store chunk reaches: only SeqKVError may escape.

Mutations keep the container's checksums valid (sections are re-framed after a payload is damaged), so
the damage reaches the META schema, the codecs and the state parser instead of stopping at a CRC.
A fixed seed and a few hundred cases per target keep it to seconds and make failures reproducible.
"""
from __future__ import annotations

import json
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from seqkv_edge.codecs.tokens_portable import TokensPortableCodec
from seqkv_edge.codecs.varint import write_varint
from seqkv_edge.container.chunk_format import parse_chunk
from seqkv_edge.container.chunks import ChunkCodec
from seqkv_edge.container.session_file import MAGIC, Kind, parse_container
from seqkv_edge.errors import SeqKVError
from seqkv_edge.sessions.snapshot import decode_state
from seqkv_edge.sessions.tokens import decode_header, read_schedule
from seqkv_edge.state.blob import parse_seq_state

FIXTURES = Path(__file__).parent / "fixtures"
SEED = 18
CASES = 300
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 40]
JSON_VALUES = [None, True, -1, 0, 1 << 40, 2.5, "x", [], {}, [[[[[]]]]], {"id": 5}, "kv_lossless"]


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(6)
        at = rng.randrange(len(out)) if out else 0
        if choice == 0 and out:
            out[at] ^= 1 << rng.randrange(8)
        elif choice == 1 and out:
            out[at] = rng.randrange(256)
        elif choice == 2:
            value = rng.choice(INTERESTING)
            out[at:at + 4] = struct.pack("<Q", value)[:4]
        elif choice == 3 and out:
            del out[at:at + rng.randint(1, 16)]
        elif choice == 4:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        else:
            out = out[:at]
    return bytes(out)


def mutate_json(rng: random.Random, meta):
    """Replace one value anywhere in the META (or the whole of it) by a value of another kind."""
    meta = json.loads(json.dumps(meta))
    paths, todo = [()], [((), meta)]
    while todo:
        path, value = todo.pop()
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, child in items:
            paths.append(path + (key,))
            todo.append((path + (key,), child))
    path = rng.choice(paths)
    if not path:
        return rng.choice([[], "meta", 7, None, "[" * 5000 + "]" * 5000])
    parent = meta
    for key in path[:-1]:
        parent = parent[key]
    if rng.random() < 0.2 and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = rng.choice(JSON_VALUES)
    return meta


def frame(version: int, sections: list[tuple[int, bytes]]) -> bytes:
    """A container with valid checksums around (possibly damaged) sections."""
    out, crcs = bytearray(MAGIC + bytes([version, 0])), bytearray()
    for kind, payload in sections:
        crc = struct.pack("<I", zlib.crc32(payload))
        out += bytes([kind]) + write_varint(len(payload)) + payload + crc
        crcs += crc
    return bytes(out + bytes([Kind.END, 0]) + struct.pack("<I", zlib.crc32(crcs)))


def mutated_files(path: Path, rng: random.Random):
    data = path.read_bytes()
    container = parse_container(data)
    first = (Kind.HEADER, bytes(container.header)) if container.header is not None \
        else (Kind.META, json.dumps(container.meta).encode())
    sections = [first] + [(kind, bytes(payload)) for kind, payload in container.sections]
    for _ in range(CASES):
        how = rng.randrange(4)
        if how == 0:
            yield mutate_bytes(rng, data)  # raw: mostly stops at a checksum
            continue
        damaged = list(sections)
        i = rng.randrange(len(damaged))
        kind, payload = damaged[i]
        if how == 1 and kind == Kind.META:
            meta = mutate_json(rng, container.meta)
            payload = meta.encode() if isinstance(meta, str) else json.dumps(meta).encode()
        elif how == 2:
            kind = rng.choice([k for k in Kind if k != Kind.END])
        else:
            payload = mutate_bytes(rng, payload)
        damaged[i] = (kind, payload)
        yield frame(container.version, damaged)


def load_file(data: bytes) -> None:
    """What loading a file does before it touches a context (the decoders, no model needed)."""
    container = parse_container(data)
    if container.header is None:
        decode_state(container, "fuzzed")
        return
    header = decode_header(container.header, "fuzzed")
    portable = TokensPortableCodec(n_vocab=max(header["n_vocab"], 1) if header["n_vocab"] <= 1 << 24 else 259)
    if header["tier"] == "hybrid":
        read_schedule(container, max_calls=64 * 512)
    for payload in container.payloads(Kind.TOKENS) + container.payloads(Kind.FALLBACK):
        portable.decode(payload, max_tokens=512)


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.seqkv")), ids=lambda p: p.name)
def test_mutated_session_files_raise_only_seqkv_errors(path):
    rng = random.Random(f"{SEED}:{path.name}")
    refused = 0
    for data in mutated_files(path, rng):
        try:
            load_file(data)
        except SeqKVError:
            refused += 1
    assert refused > CASES // 2  # the mutations do reach the checks


def fixture_chunks() -> tuple[list[bytes], int]:
    container = parse_container((FIXTURES / "session_v2_snapshot_f16.seqkv").read_bytes())
    blob, tokens = decode_state(container, "fixture")
    state = parse_seq_state(blob, has_cell_ext=False, has_v=True)
    chunks = ChunkCodec(n_threads=1).session_chunks(state, tokens, 259, bytes(8))
    n = len(tokens)
    return [chunks.payload(0, n // 2), chunks.payload(n // 2, n)], n


def test_mutated_store_chunks_raise_only_seqkv_errors():
    (first, second), n = fixture_chunks()
    codec = ChunkCodec(n_threads=1)
    cell_bytes = parse_chunk(first).layout.cell_bytes()
    rng = random.Random(SEED)
    refused = 0
    for case in range(CASES):
        target = rng.randrange(2)
        damaged = mutate_bytes(rng, first if target == 0 else second)
        payloads = [damaged, second] if target == 0 else [first, damaged]
        try:
            if case % 2:
                codec.rebuild(payloads, n - 1, bytes(8), node_ends=[n // 2, n], max_cell_bytes=4 * cell_bytes)
            elif target == 0:
                codec.split(damaged, 0, 3, n // 2)
            else:
                codec.split(damaged, n // 2, 3, n - n // 2)
        except SeqKVError:
            refused += 1
    assert refused > CASES // 2


def test_truncated_chunks_are_corrupt_data():
    (first, _), _ = fixture_chunks()
    for end in [0, 3, 4, 5, 10, 30, len(first) // 2, len(first) - 1]:
        with pytest.raises(SeqKVError):
            parse_chunk(first[:end])


def test_random_bytes_are_corrupt_data():
    rng = np.random.default_rng(SEED)
    for size in [0, 1, 6, 40, 400]:
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        for loader in (parse_container, parse_chunk, lambda d: parse_container(MAGIC + b"\x02\x00" + d)):
            with pytest.raises(SeqKVError):
                loader(data)
