"""Session files, the store's KV chunks and named-session records of every format version, committed under
tests/fixtures/, must decode forever."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from seqkv_edge import Llama, SeqKV
from seqkv_edge.codecs.tokens_portable import TokensPortableCodec
from seqkv_edge.container.chunks import ChunkCodec
from seqkv_edge.container.session_file import Kind, read_container
from seqkv_edge.fingerprint import model_fingerprint
from seqkv_edge.sessions.named import _pack_record, _unpack_record
from seqkv_edge.sessions.snapshot import decode_state
from seqkv_edge.sessions.tokens import build_hash, decode_header, read_schedule
from seqkv_edge.state.blob import read_seq_state

FIXTURES = Path(__file__).parent / "fixtures"
VERSIONS = [1, 2]


def expected(version: int) -> dict:
    return json.loads((FIXTURES / f"session_v{version}_expected.json").read_text())


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", ["snapshot_f16", "snapshot_q8_0"])
def test_snapshot_fixture_decodes_to_the_same_state(name, version):
    container = read_container(FIXTURES / f"session_v{version}_{name}.seqkv")
    assert container.version == version
    blob, tokens = decode_state(container, name)
    assert hashlib.sha256(blob).hexdigest() == expected(version)[name]["state_sha256"]
    assert tokens.tolist() == expected(version)[name]["tokens"]


@pytest.mark.parametrize("version", VERSIONS)
def test_portable_tokens_fixture_decodes(version):
    container = read_container(FIXTURES / f"session_v{version}_tokens_portable.seqkv")
    header = decode_header(container.header, "fixture")
    want = expected(version)["tokens_portable"]["tokens"]
    assert header["tier"] == "portable" and header["n_tokens"] == len(want)
    codec = TokensPortableCodec(n_vocab=header["n_vocab"])
    assert codec.decode(container.payload(Kind.TOKENS)).tolist() == want


@pytest.mark.parametrize("version", VERSIONS)
def test_hybrid_fixture_replays_to_the_same_state(tiny_model_path, version):
    path = FIXTURES / f"session_v{version}_tokens_hybrid.seqkv"
    container = read_container(path)
    header = decode_header(container.header, "fixture")
    schedule = read_schedule(container)
    assert header["tier"] == "hybrid" and schedule.n_evaluated == header["n_tokens"]
    if header["fingerprint"] != model_fingerprint(tiny_model_path) or header["build"] != build_hash():
        pytest.skip("the tiny model or the llama.cpp build differs from the one that wrote the fixture")
    llm = Llama(model_path=tiny_model_path, n_ctx=512, n_batch=64, verbose=False,
                kv_compressor=SeqKV(kv="none", tokens="hybrid"))
    llm.load_session(path)
    assert hashlib.sha256(read_seq_state(llm.ctx)).hexdigest() == expected(version)["tokens_hybrid"]["state_sha256"]


@pytest.mark.parametrize("layout", ["f16", "q8_0"])
def test_store_chunk_fixture_rebuilds_to_the_same_state(layout):
    """Chunk format 1 (tests/fixtures/chunk_make_v1.py): two chunks of one session, cut at node_ends[0]."""
    want = json.loads((FIXTURES / "chunk_v1_expected.json").read_text())[layout]
    payloads = [(FIXTURES / f"chunk_v1_{layout}_{i}.bin").read_bytes() for i in range(2)]
    codec, identity, ends = ChunkCodec(n_threads=1), bytes.fromhex(want["identity"]), want["node_ends"]
    blob, tokens = codec.rebuild(payloads, ends[-1], identity, node_ends=ends)
    assert hashlib.sha256(blob).hexdigest() == want["state_sha256"] and tokens.tolist() == want["tokens"]
    blob, tokens = codec.rebuild(payloads, want["prefix_tokens"], identity, node_ends=ends)
    assert hashlib.sha256(blob).hexdigest() == want["prefix_state_sha256"]
    assert tokens.tolist() == want["tokens"][:want["prefix_tokens"]]
    first, rest = codec.split(payloads[1], ends[0], 5, ends[1] - ends[0])  # a split re-codes the same cells
    blob, _ = codec.rebuild([payloads[0], first, rest], ends[-1], identity, node_ends=[ends[0], ends[0] + 5, ends[1]])
    assert hashlib.sha256(blob).hexdigest() == want["state_sha256"]


def test_named_session_record_fixture_decodes():
    """Record format 1 (tests/fixtures/named_record_make_v1.py): the META and tokens, and the same bytes again."""
    want = json.loads((FIXTURES / "named_record_v1_expected.json").read_text())
    data = (FIXTURES / "named_record_v1.rec").read_bytes()
    meta, tokens = _unpack_record(data, "fixture")
    assert meta == want["meta"] and tokens.tolist() == want["tokens"]
    assert _pack_record(meta, TokensPortableCodec(n_vocab=meta["n_vocab"]).encode(tokens)) == data
