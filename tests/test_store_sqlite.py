"""The SQLite + blob files store: dedup, splits, eviction, several processes, writers killed mid-save.

Chunks in these tests are the token ids themselves, ``width`` bytes per token, so any session's
chunks must concatenate to exactly ``chunk_bytes(tokens)``: a chunk boundary that does not follow
a node split shows up as a mismatch.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from seqkv_edge.errors import (
    CorruptDataError,
    SeqKVError,
    StoreFullError,
    StoreUnavailableError,
)
from seqkv_edge.store import SQLiteStore

REPO = Path(__file__).resolve().parents[1]


def chunk_bytes(tokens: np.ndarray, width: int = 4) -> bytes:
    as_bytes = np.ascontiguousarray(tokens, "<i4").view(np.uint8).reshape(-1, 4)
    return np.tile(as_bytes, (1, (width + 3) // 4))[:, :width].tobytes()


def payload_fn(tokens: np.ndarray, width: int = 4):
    return lambda start, end: chunk_bytes(tokens[start:end], width)


def splitter(width: int = 4):
    return lambda payload, start, k, n_tokens: (payload[: width * k], payload[width * k :])


def assert_readable(store, name: str, tokens: np.ndarray | None = None, width: int = 4) -> np.ndarray:
    record = store.get_session(name)
    if tokens is not None:
        assert np.array_equal(record.tokens, tokens)
    assert b"".join(store.get_payloads(record.node_ids)) == chunk_bytes(record.tokens, width)
    return record.tokens


def put(store, name: str, tokens: np.ndarray, width: int = 4, **options):
    return store.put_session(name, tokens, payload_fn(tokens, width), **options)


def ints(rng, n, low=0, high=50_000):
    return rng.integers(low, high, n).astype(np.int32)


@pytest.fixture
def store(tmp_path):
    with SQLiteStore(tmp_path / "store", split_payload=splitter(), durable=False) as opened:
        yield opened


def blob_files(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in (path / "blobs").rglob("*") if p.is_file()}


# ---- one process ----------------------------------------------------------------------------


def test_shared_prefix_is_stored_once(tmp_path):
    """100 sessions: a 1,000-token prefix + distinct 200-token suffixes, 10 bytes per token."""
    width, rng = 10, np.random.default_rng(0)
    store = SQLiteStore(tmp_path, split_payload=splitter(width), durable=False)
    prefix = ints(rng, 1000)
    sessions = {}
    for i in range(100):
        suffix = ints(rng, 200)
        suffix[0] = 60_000 + i  # distinct first tokens: suffixes share nothing
        sessions[f"chat-{i}"] = np.concatenate([prefix, suffix])
        result = put(store, f"chat-{i}", sessions[f"chat-{i}"], width)
        assert result.reused_tokens == (0 if i == 0 else 1000)
    stats = store.stats()
    assert stats.payload_bytes == width * (1000 + 100 * 200)
    assert stats.payload_bytes <= 1.1 * width * (1000 + 100 * 200)
    assert stats.payload_bytes < 0.2 * sum(width * len(t) for t in sessions.values())
    assert (stats.sessions, stats.nodes, stats.tokens) == (100, 101, 1000 + 100 * 200)
    for name, tokens in sessions.items():
        assert_readable(store, name, tokens, width)
    assert store.check().nodes == 101


def test_longest_prefix_reports_the_nodes_and_a_partial_last_node(store):
    rng = np.random.default_rng(1)
    a = ints(rng, 300)
    put(store, "a", a)
    b = np.concatenate([a[:120], ints(rng, 30)])
    put(store, "b", b)
    query = np.concatenate([a[:200], ints(rng, 10)])
    match = store.longest_prefix(query)
    assert match.length == 200 and match.partial
    assert match.node_ends.tolist() == [120, 300]
    head, tail = store.get_payloads(match.node_ids)
    assert head == chunk_bytes(a[:120]) and tail == chunk_bytes(a[120:300])
    miss = store.longest_prefix(ints(rng, 5, 60_000, 61_000))
    assert miss.length == 0 and miss.node_ids.shape[0] == 0 and not miss.partial


def test_a_split_rewrites_only_the_split_node(tmp_path):
    rng = np.random.default_rng(2)
    store = SQLiteStore(tmp_path, split_payload=splitter(), durable=False)
    a, other = ints(rng, 1000), ints(rng, 500, 60_000, 61_000)
    put(store, "a", a)
    put(store, "other", other)
    (node_a,) = store.get_session("a").node_ids
    before = blob_files(tmp_path)
    b = np.concatenate([a[:600], ints(rng, 50)])
    result = put(store, "b", b)
    after = blob_files(tmp_path)
    # the untouched session keeps its very file; node a gets a new version of its file, and
    # only the new head and the new leaf are added
    other_file = f"{int(store.get_session('other').node_ids[0]):016x}.0"
    assert after[other_file] == before[other_file]
    assert f"{int(node_a):016x}.0" in before and f"{int(node_a):016x}.1" in after
    assert len(after) == len(before) + 2
    head, leaf = result.node_ids
    assert store.get_session("a").node_ids.tolist() == [head, node_a]  # a's id stays on the tail
    assert store.get_payloads([head, node_a, leaf]) == [
        chunk_bytes(a[:600]), chunk_bytes(a[600:]), chunk_bytes(b[600:])
    ]


def test_weights_and_recompute_times_follow_the_split(store):
    rng = np.random.default_rng(3)
    a = ints(rng, 100)
    bits = rng.uniform(0, 12, 100)
    put(store, "a", a, surprisal_bits=bits, recompute_s=0.01)
    b = np.concatenate([a[:40], ints(rng, 10)])
    put(store, "b", b, surprisal_bits=np.concatenate([bits[:40], np.ones(10)]), recompute_s=0.01)
    head, tail = (s for s in store.node_stats(store.get_session("a").node_ids))
    assert head.weight_bits == pytest.approx(bits[:40].sum())
    assert tail.weight_bits == pytest.approx(bits[40:].sum())
    assert (head.recompute_s, tail.recompute_s) == (pytest.approx(0.4), pytest.approx(0.6))
    assert (head.n_tokens, tail.n_tokens, head.nbytes, tail.nbytes) == (40, 60, 160, 240)
    assert head.hits == 2 and tail.hits == 1  # head: a's save + b's reuse
    store.get_payloads([head.node_id])
    assert store.node_stats([head.node_id])[0].hits == 3
    assert store.node_stats([head.node_id])[0].last_use >= tail.last_use


def test_prefix_duplicate_and_replaced_sessions_share_and_release_nodes(store):
    rng = np.random.default_rng(4)
    a = ints(rng, 200)
    put(store, "a", a)
    put(store, "prefix-of-a", a[:80])  # ends inside a's node: a split, no new chunk
    put(store, "copy-of-a", a)
    assert store.stats().payload_bytes == 4 * 200 and store.stats().nodes == 2
    assert_readable(store, "prefix-of-a", a[:80])
    store.delete_session("a")
    assert_readable(store, "copy-of-a", a)  # the node stays: copy-of-a still ends there
    store.delete_session("copy-of-a")
    assert store.stats().nodes == 1 and store.stats().payload_bytes == 4 * 80
    replacement = ints(rng, 30, 60_000, 61_000)
    put(store, "prefix-of-a", replacement)
    assert store.stats().payload_bytes == 4 * 30 and store.list_sessions() == ["prefix-of-a"]
    with pytest.raises(KeyError):
        store.delete_session("a")
    with pytest.raises(KeyError):
        store.get_session("a")
    store.check()


def test_another_connection_sees_new_changed_and_deleted_sessions(tmp_path):
    rng = np.random.default_rng(5)
    writer = SQLiteStore(tmp_path, split_payload=splitter(), durable=False)
    reader = SQLiteStore(tmp_path, durable=False)
    a = ints(rng, 100)
    put(writer, "a", a)
    assert reader.longest_prefix(a).length == 100
    b = np.concatenate([a[:30], ints(rng, 20)])
    put(writer, "b", b)  # splits a's node: the reader must apply the change, not just add
    assert reader.longest_prefix(b).node_ends.tolist() == [30, 50]
    assert_readable(reader, "a", a)
    writer.delete_session("b")
    assert reader.longest_prefix(b).length == 30
    assert reader.list_sessions() == ["a"] and reader.stats().nodes == 2


def test_a_reader_behind_the_pruned_change_log_reloads_everything(tmp_path, monkeypatch):
    from seqkv_edge.store import sqlite_store

    monkeypatch.setattr(sqlite_store, "TOMBSTONES_KEPT", 2)
    rng = np.random.default_rng(11)
    writer = SQLiteStore(tmp_path, split_payload=splitter(), durable=False)
    reader = SQLiteStore(tmp_path, durable=False)
    sessions = {f"s{i}": ints(rng, 20, 1000 * i, 1000 * i + 999) for i in range(6)}
    for name, tokens in sessions.items():
        put(writer, name, tokens)
    assert reader.longest_prefix(sessions["s0"]).length == 20  # the reader has s0 in memory
    for name in ["s0", "s1", "s2"]:
        writer.delete_session(name)
    writer.gc()  # prunes tombstones the reader has not seen, s0's among them
    floor = writer._db.execute("SELECT tomb_floor FROM meta").fetchone()[0]
    assert floor > reader._gen
    assert reader.longest_prefix(sessions["s0"]).length == 0
    assert reader.longest_prefix(sessions["s4"]).length == 20
    assert reader.stats().nodes == 3


def test_reopening_rebuilds_the_trie(tmp_path):
    rng = np.random.default_rng(6)
    stem = ints(rng, 50)
    sessions = {f"s{i}": np.concatenate([stem[: rng.integers(1, 50)], ints(rng, 20)]) for i in range(40)}
    with SQLiteStore(tmp_path, split_payload=splitter(), durable=True) as store:
        for name, tokens in sessions.items():
            put(store, name, tokens)
        nodes = store.stats().nodes
    with SQLiteStore(tmp_path) as reopened:
        assert reopened.stats().nodes == nodes and reopened.list_sessions() == sorted(sessions)
        for name, tokens in sessions.items():
            assert reopened.longest_prefix(tokens).length == len(tokens)
            assert_readable(reopened, name, tokens)


def test_a_split_without_the_hook_is_refused_and_changes_nothing(tmp_path):
    store = SQLiteStore(tmp_path, durable=False)
    put(store, "a", np.arange(10, dtype=np.int32))
    put(store, "b", np.arange(10, 20, dtype=np.int32))  # no split needed: fine
    with pytest.raises(SeqKVError, match="split_payload"):
        put(store, "c", np.array([0, 1, 2, 99], np.int32))
    assert store.list_sessions() == ["a", "b"] and store.stats().nodes == 2


def test_bad_arguments_are_value_errors(store):
    with pytest.raises(ValueError):
        put(store, "empty", np.array([], np.int32))
    with pytest.raises(ValueError):
        put(store, "x", np.arange(5, dtype=np.int32), surprisal_bits=np.ones(4))
    with pytest.raises(TypeError):
        store.put_session("x", np.arange(5, dtype=np.int32), lambda start, end: "not bytes")


def test_damaged_chunk_is_reported_not_returned(tmp_path):
    store = SQLiteStore(tmp_path, durable=False)
    tokens = np.arange(100, dtype=np.int32)
    put(store, "a", tokens)
    (blob,) = (p for p in (tmp_path / "blobs").rglob("*") if p.is_file())
    data = bytearray(blob.read_bytes())
    data[17] ^= 0x40
    blob.write_bytes(bytes(data))
    with pytest.raises(CorruptDataError, match="crc"):
        store.get_payloads(store.get_session("a").node_ids)
    with pytest.raises(CorruptDataError, match="integrity check failed"):
        store.check()
    blob.unlink()
    with pytest.raises(CorruptDataError, match="missing"):
        store.get_payloads(store.get_session("a").node_ids)


# ---- eviction --------------------------------------------------------------------------------


def test_evict_keeps_what_saves_most_recompute_per_byte(store):
    rng = np.random.default_rng(7)
    shared = ints(rng, 100)
    sessions = {}
    for i, name in enumerate(["old", "cold", "warm", "hot"]):
        sessions[name] = np.concatenate([shared, ints(rng, 50, 60_000 + 1000 * i, 60_999 + 1000 * i)])
        put(store, name, sessions[name])
    for _ in range(3):
        store.get_payloads(store.get_session("hot").node_ids)
    store.get_payloads(store.get_session("warm").node_ids)
    # cold and old were never read: equal scores, and old was used longer ago
    # each suffix node holds 200 bytes; drop two of them
    evicted = store.evict(store.stats().payload_bytes - 400)
    assert evicted == ["cold", "old"]
    assert store.list_sessions() == ["hot", "warm"]
    for name in ("hot", "warm"):
        assert_readable(store, name, sessions[name])
    with pytest.raises(KeyError):
        store.get_payloads(store.get_session("hot").node_ids[:1].tolist() + [12345])
    store.check()


def test_pinned_nodes_and_nodes_with_children_are_never_evicted(store):
    rng = np.random.default_rng(8)
    shared = ints(rng, 100)
    a, b = np.concatenate([shared, ints(rng, 10)]), np.concatenate([shared, ints(rng, 10, 60_000, 61_000)])
    put(store, "a", a)
    put(store, "b", b)
    with store.pin(store.get_session("a").node_ids):
        assert store.evict(0) == ["b"]
        assert store.list_sessions() == ["a"]
        store.delete_session("a")  # the record goes, the pinned nodes stay until unpinned
        assert store.stats().nodes == 2
    assert store.gc() == 2
    assert store.stats() == type(store.stats())(0, 0, 0, 0)
    store.check()


def test_budget_evicts_on_put_or_refuses_a_session_that_cannot_fit(tmp_path):
    rng = np.random.default_rng(9)
    store = SQLiteStore(tmp_path, split_payload=splitter(), durable=False, budget_bytes=4 * 1000)
    evicted = []
    for i in range(10):
        evicted += put(store, f"s{i}", ints(rng, 300, 1000 * i, 1000 * i + 999)).evicted_sessions
        assert store.stats().payload_bytes <= 4 * 1000
    assert evicted == [f"s{i}" for i in range(7)]  # least recently used first at equal scores
    before = store.list_sessions()
    with pytest.raises(StoreFullError, match="store full"):
        put(store, "huge", ints(rng, 1001, 20_000, 30_000))
    assert store.list_sessions() == before
    store.check()


# ---- several processes -------------------------------------------------------------------------

WORKER = r"""
import os, signal, sys
import numpy as np
from seqkv_edge.store import open_store

location, mode, seed, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
options = {} if location.startswith("redis") else {"durable": False}
store = open_store(location, split_payload=lambda p, s, k, n: (p[: 4 * k], p[4 * k :]), **options)
rng = np.random.default_rng(seed)
# the same four system prompts in every worker, so writers split each other's nodes
prompts = [np.random.default_rng(100 + i).integers(0, 1000, 300).astype(np.int32) for i in range(4)]

def session(i):
    prompt = prompts[i % 4][: rng.integers(20, 300)]
    return np.concatenate([prompt, rng.integers(0, 1000, rng.integers(1, 80)).astype(np.int32)])

def save(name, tokens):
    store.put_session(name, tokens, lambda a, b: np.ascontiguousarray(tokens[a:b], "<i4").tobytes())

if mode == "crash":
    save("base", np.concatenate([prompts[0], [5000]]).astype(np.int32))
    for i in range(count):
        save(f"w{seed}-{i}", session(i))
    stage = sys.argv[5]
    store._crash_hook = lambda at: os.kill(os.getpid(), signal.SIGKILL) if at == stage else None
    save("victim", np.concatenate([prompts[0][:150], [7000, 7001]]).astype(np.int32))
    print("survived", flush=True)
elif mode == "loop":
    print("ready", flush=True)
    i = 0
    while True:
        save(f"w{seed}-{i}", session(i))
        if i % 4 == 3:
            store.delete_session(f"w{seed}-{i - 2}")
        i += 1
else:
    for i in range(count):
        save(f"w{seed}-{i}", session(i))
    print("done", flush=True)
"""


def start_worker(location, mode: str, seed: int, count: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(location), mode, str(seed), str(count), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )


def assert_consistent(store) -> list[str]:
    """Integrity check passes and every listed session reads back exactly."""
    store.check()
    names = store.list_sessions()
    for name in names:
        assert_readable(store, name)
    return names


def test_two_writer_processes(tmp_path):
    workers = [start_worker(tmp_path, "write", seed, 30) for seed in (1, 2)]
    for worker in workers:
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
    store = SQLiteStore(tmp_path)
    names = assert_consistent(store)
    assert names == sorted(f"w{seed}-{i}" for seed in (1, 2) for i in range(30))
    # both writers' sessions share the four prompts: far fewer tokens than the sum
    total = sum(len(store.get_session(n).tokens) for n in names)
    assert store.stats().tokens < 0.6 * total


STAGES = ["blob_written", "blob_renamed", "before_commit", "after_commit"]


def test_writer_killed_at_each_stage_of_a_save(tmp_path):
    workers = {stage: start_worker(tmp_path / stage, "crash", 3, 6, stage) for stage in STAGES}
    for stage, worker in workers.items():
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == -signal.SIGKILL, (stage, err)
        store = SQLiteStore(tmp_path / stage)
        # opening removed the killed save's leftovers: exactly one file per node
        assert len(blob_files(tmp_path / stage)) == store.stats().nodes
        assert list((tmp_path / stage / "tmp").iterdir()) == []
        names = assert_consistent(store)
        assert ("victim" in names) == (stage == "after_commit")
        assert len(names) == (8 if stage == "after_commit" else 7)
        put(store, "after", np.concatenate([np.arange(5), [1]]).astype(np.int32))


def test_writers_killed_at_random_moments(tmp_path):
    rng = np.random.default_rng(10)
    workers = [start_worker(tmp_path, "loop", seed, 0) for seed in range(2)]
    for worker in workers:
        assert worker.stdout.readline().strip() == "ready"
    for worker in workers:  # each dies at its own moment, most likely inside a save
        time.sleep(rng.uniform(0.1, 0.3))
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    store = SQLiteStore(tmp_path)
    assert len(assert_consistent(store)) > 10
