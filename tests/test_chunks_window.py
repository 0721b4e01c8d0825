"""The store's chunk format 2: sliding-window (iSWA) caches, whose window travels with the chunk ending a session.
Frozen fixtures (tests/fixtures/chunk_make_v2.py) rebuild to a frozen state; a restore stops at the deepest chunk
that carries a window; splitting keeps the window with the chunk that ends where it does."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from seqkv_edge.container.chunk_format import CHUNK_VERSION, WINDOW_VERSION, parse_chunk
from seqkv_edge.container.chunks import ChunkCodec, complete_prefix
from seqkv_edge.state.blob import parse_seq_state

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "chunk_v2_expected.json").read_text())


def payloads():
    return [(FIXTURES / f"chunk_v2_window_{i}.bin").read_bytes() for i in range(2)]


def test_frozen_window_chunks_rebuild_the_two_section_state():
    chunks = [parse_chunk(p) for p in payloads()]
    assert [p[4] for p in payloads()] == [WINDOW_VERSION] * 2
    assert [c.window_cells for c in chunks] == [0, EXPECTED["window"]]
    blob, tokens = ChunkCodec(n_threads=1).rebuild(payloads(), len(EXPECTED["tokens"]),
                                                   bytes.fromhex(EXPECTED["identity"]), node_ends=EXPECTED["node_ends"])
    assert hashlib.sha256(blob).hexdigest() == EXPECTED["state_sha256"] and tokens.tolist() == EXPECTED["tokens"]
    state = parse_seq_state(bytes(blob), has_cell_ext=False, has_v=True)
    window = state.sections[1].streams[0]
    assert len(state.sections) == 2 and window.positions.tolist() == list(range(len(tokens) - 24, len(tokens)))


def test_coding_the_state_again_gives_the_same_chunks():
    state = parse_seq_state((FIXTURES / "chunk_v2_state.bin").read_bytes(), has_cell_ext=False, has_v=True)
    chunks = ChunkCodec(n_threads=1).session_chunks(state, np.array(EXPECTED["tokens"], np.int32), 259,
                                                    bytes.fromhex(EXPECTED["identity"]))
    cut, end = EXPECTED["node_ends"]
    assert [chunks.payload(0, cut), chunks.payload(cut, end)] == payloads()


def test_a_restore_stops_at_the_deepest_stored_window():
    cut, end = EXPECTED["node_ends"]
    assert complete_prefix(payloads(), end) == 2
    assert complete_prefix(payloads(), end - 1) == 0  # the only window ends at `end`
    single = [(FIXTURES / f"chunk_v1_f16_{i}.bin").read_bytes() for i in range(2)]
    assert parse_chunk(single[0]).window_cells == 0 and single[0][4] == CHUNK_VERSION
    assert complete_prefix(single, 50) == 2  # one section: any prefix restores
    with pytest.raises(ValueError, match="session end"):
        ChunkCodec(n_threads=1).rebuild(payloads(), end - 5, bytes.fromhex(EXPECTED["identity"]))


def test_splitting_keeps_the_window_with_the_second_half():
    codec = ChunkCodec(n_threads=1)
    cut, end = EXPECTED["node_ends"]
    head, tail = codec.split(payloads()[1], cut, 7, end - cut)
    assert (parse_chunk(head).window_cells, parse_chunk(tail).window_cells) == (0, EXPECTED["window"])
    blob, _ = codec.rebuild([payloads()[0], head, tail], end, bytes.fromhex(EXPECTED["identity"]),
                            node_ends=[cut, cut + 7, end])
    assert hashlib.sha256(blob).hexdigest() == EXPECTED["state_sha256"]


def test_damaged_window_headers_are_refused():
    from seqkv_edge.errors import CorruptDataError

    damaged = bytearray(payloads()[1])
    damaged[4] = CHUNK_VERSION  # a window flag in a version-1 chunk
    with pytest.raises(CorruptDataError):
        parse_chunk(bytes(damaged))
    with pytest.raises(CorruptDataError):
        parse_chunk(payloads()[1][:-3])
