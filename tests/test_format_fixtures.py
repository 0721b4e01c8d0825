"""Session files of format version 1, committed under tests/fixtures/, must decode forever."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from seqkv_edge import Llama, SeqKV
from seqkv_edge.codecs.tokens_portable import TokensPortableCodec
from seqkv_edge.container import Kind, read_container
from seqkv_edge.fingerprint import model_fingerprint
from seqkv_edge.schedule import Schedule
from seqkv_edge.session import decode_state
from seqkv_edge.state import read_seq_state
from seqkv_edge.token_session import build_hash, decode_header

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "session_v1_expected.json").read_text())


@pytest.mark.parametrize("name", ["snapshot_f16", "snapshot_q8_0"])
def test_snapshot_fixture_decodes_to_the_same_state(name):
    container = read_container(FIXTURES / f"session_v1_{name}.seqkv")
    assert container.version == 1
    blob, tokens = decode_state(container, name)
    assert hashlib.sha256(blob).hexdigest() == EXPECTED[name]["state_sha256"]
    assert tokens.tolist() == EXPECTED[name]["tokens"]


def test_portable_tokens_fixture_decodes():
    container = read_container(FIXTURES / "session_v1_tokens_portable.seqkv")
    header = decode_header(container.header, "fixture")
    assert header["tier"] == "portable" and header["n_tokens"] == len(EXPECTED["tokens_portable"]["tokens"])
    codec = TokensPortableCodec(n_vocab=header["n_vocab"])
    assert codec.decode(container.payload(Kind.TOKENS)).tolist() == EXPECTED["tokens_portable"]["tokens"]


def test_hybrid_fixture_replays_to_the_same_state(tiny_model_path):
    path = FIXTURES / "session_v1_tokens_hybrid.seqkv"
    container = read_container(path)
    header = decode_header(container.header, "fixture")
    schedule = Schedule.decode(container.payload(Kind.SCHEDULE))
    assert header["tier"] == "hybrid" and schedule.n_evaluated == header["n_tokens"]
    if header["fingerprint"] != model_fingerprint(tiny_model_path) or header["build"] != build_hash():
        pytest.skip("the tiny model or the llama.cpp build differs from the one that wrote the fixture")
    llm = Llama(model_path=tiny_model_path, n_ctx=512, n_batch=64, verbose=False,
                kv_compressor=SeqKV(kv="none", tokens="hybrid"))
    llm.load_session(path)
    assert hashlib.sha256(read_seq_state(llm.ctx)).hexdigest() == EXPECTED["tokens_hybrid"]["state_sha256"]
