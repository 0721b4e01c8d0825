"""Session files read by a thread while they are decoded (container/streamed.py): the same sections as a whole
read, only verified sections handed out, every damage reported, the reader gone when the restore ends."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from seqkv_edge.container import streamed
from seqkv_edge.container.session_file import Kind, parse_container
from seqkv_edge.container.streamed import open_streamed
from seqkv_edge.errors import CorruptDataError

FIXTURES = Path(__file__).parent / "fixtures"
FILES = sorted(FIXTURES.glob("session_v*.seqkv"))


def fresh_buffer(size: int) -> memoryview:
    return memoryview(bytearray(size))


def readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "seqkv-read"]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Reads of 64 bytes: every section arrives over many reads, most while the consumer waits."""
    monkeypatch.setattr(streamed, "CHUNK_BYTES", 64)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_a_streamed_file_gives_what_a_whole_read_gives(path):
    whole = parse_container(path.read_bytes(), source=str(path))
    with open_streamed(path, fresh_buffer) as container:
        assert (container.version, container.meta) == (whole.version, whole.meta)
        assert (container.header is None) == (whole.header is None)
        if whole.header is not None:
            assert bytes(container.header) == bytes(whole.header)
        n_kv = len(whole.payloads(Kind.KV))
        kv = container.arriving(Kind.KV, n_kv)
        assert len(kv) == n_kv and [bytes(p) for p in kv] == [bytes(p) for p in whole.payloads(Kind.KV)]
        container.complete()
        assert [(k, bytes(p)) for k, p in container.sections] == [(k, bytes(p)) for k, p in whole.sections]
    assert not readers()


def damaged(tmp_path, data: bytes) -> Path:
    path = tmp_path / "damaged.seqkv"
    path.write_bytes(data)
    return path


def test_a_damaged_kv_section_is_reported_and_never_handed_out(tmp_path):
    data = bytearray((FIXTURES / "session_v2_snapshot_f16.seqkv").read_bytes())
    whole = parse_container(bytes(data))
    kv = whole.payloads(Kind.KV)
    offset = bytes(data).index(bytes(kv[1])) + 10  # inside the second KV section
    data[offset] ^= 0x55
    with open_streamed(damaged(tmp_path, bytes(data)), fresh_buffer) as container:
        sections = container.arriving(Kind.KV, len(kv))
        assert bytes(sections[0]) == bytes(kv[0])  # before the damage: verified and handed out
        with pytest.raises(CorruptDataError, match="checksum mismatch"):
            sections[1]
        with pytest.raises(CorruptDataError, match="checksum mismatch"):
            container.complete()
    assert not readers()


@pytest.mark.parametrize("cut", [3, 100, -5, -1])
def test_truncated_files_are_refused(tmp_path, cut):
    data = (FIXTURES / "session_v2_snapshot_f16.seqkv").read_bytes()
    path = damaged(tmp_path, data[:cut])
    with pytest.raises(CorruptDataError):
        with open_streamed(path, fresh_buffer) as container:
            container.arriving(Kind.KV, len(parse_container(data).payloads(Kind.KV)))[-1]
            container.complete()
    assert not readers()


def test_counts_other_than_expected_are_refused(tmp_path):
    path = FIXTURES / "session_v2_snapshot_f16.seqkv"
    n_kv = len(parse_container(path.read_bytes()).payloads(Kind.KV))
    with open_streamed(path, fresh_buffer) as container:
        with pytest.raises(CorruptDataError, match=f"expected {n_kv + 1} KV sections, found {n_kv}"):
            container.arriving(Kind.KV, n_kv + 1)[n_kv]
    with open_streamed(path, fresh_buffer) as container:
        container.arriving(Kind.KV, n_kv - 1)[0]
        with pytest.raises(CorruptDataError, match=f"expected {n_kv - 1} KV sections, found {n_kv}"):
            container.complete()


def test_a_consumer_leaving_early_stops_the_reader(tmp_path, monkeypatch):
    monkeypatch.setattr(streamed, "CHUNK_BYTES", 1)  # the reader is far from done when the block ends
    path = FIXTURES / "session_v2_snapshot_f16.seqkv"
    with pytest.raises(RuntimeError):
        with open_streamed(path, fresh_buffer) as container:
            assert container.meta
            raise RuntimeError("the model does not match")
    assert not readers()


def test_a_file_that_is_not_a_session_is_refused_with_the_reader_gone(tmp_path):
    with pytest.raises(CorruptDataError, match="bad magic"):
        with open_streamed(damaged(tmp_path, b"not a session file at all"), fresh_buffer):
            pass
    assert not readers()


def test_the_first_section_is_the_head_not_a_payload(tmp_path):
    path = FIXTURES / "session_v2_snapshot_f16.seqkv"
    with open_streamed(path, fresh_buffer) as container:
        with pytest.raises(CorruptDataError, match="expected one META section, found 0"):
            container.payload(Kind.META)
    with open_streamed(path, fresh_buffer) as container:
        assert container.payloads(Kind.META) == [] and container.sections[0][0] != Kind.META
