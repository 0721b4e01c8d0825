"""Threads sharing one store object, and threads saving one session file: no errors, nothing half done."""
from __future__ import annotations

import threading

import numpy as np
from test_store_sqlite import ints, put, splitter

from seqkv_edge.container.session_file import Kind, read_container, write_container
from seqkv_edge.errors import CorruptDataError
from seqkv_edge.store import SQLiteStore

ROUNDS = 300


def run_threads(*workers) -> list[BaseException]:
    """Run each worker in its own thread; the exceptions they raised."""
    errors: list[BaseException] = []

    def guarded(work):
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 -- collected and reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(work,)) for work in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def stress(store, rounds: int) -> list[BaseException]:
    """One writer (put, delete) and two readers (lookup, pin, read, list) on one store object, ``rounds`` each."""
    rng = np.random.default_rng(0)
    base = ints(rng, 40)
    sessions = [np.concatenate([base, ints(rng, 20)]) for _ in range(4)]

    def writer():
        for i in range(rounds):
            put(store, f"s{i % 4}", sessions[i % 4])
            victim = f"s{(i + 1) % 4}"
            if i % 3 == 2 and victim in store.list_sessions():
                store.delete_session(victim)

    def reader():
        for i in range(rounds):
            match = store.longest_prefix(sessions[i % 4])
            with store.pin(match.node_ids):
                try:
                    store.get_payloads(match.node_ids)
                except KeyError:  # deleted between the lookup and the pin: documented
                    pass
            store.list_sessions()

    return run_threads(writer, reader, reader)


def test_writers_and_pinning_readers_share_one_sqlite_store(tmp_path):
    store = SQLiteStore(tmp_path, split_payload=splitter(), durable=False)
    assert stress(store, ROUNDS) == []
    (leases,) = store._db.execute("SELECT count(*) FROM leases").fetchone()
    assert leases == 0  # every pin was released
    store.check()
    store.close()


def test_threads_saving_one_session_file_never_leave_a_part(tmp_path):
    path = tmp_path / "one.seqkv"
    contents = {n: bytes([n]) * (5000 + 997 * n) for n in range(3)}
    write_container(path, bytes(8), [(Kind.TOKENS, contents[0])])

    def saver(n: int):
        def work():
            for _ in range(ROUNDS):
                write_container(path, bytes([n]) * 8, [(Kind.TOKENS, contents[n])])
        return work

    def reader():
        for _ in range(2 * ROUNDS):
            try:
                container = read_container(path)
            except CorruptDataError as exc:
                raise AssertionError(f"a reader saw a partial file: {exc}") from None
            assert bytes(container.payload(Kind.TOKENS)) == contents[container.header[0]]

    assert run_threads(saver(1), saver(2), reader) == []
    assert not [p for p in tmp_path.iterdir() if p.name != "one.seqkv"]  # no temporary file left


def test_writers_and_pinning_readers_share_one_redis_store():
    """The same stress on the Redis backend (one client object shared by three threads, a real server)."""
    import uuid

    import pytest
    from redis_server import RedisServer, redis_available

    from seqkv_edge.store import RedisStore

    if not redis_available():
        pytest.skip("redis-server is not installed")
    with RedisServer() as server:
        store = RedisStore(server.url, namespace=uuid.uuid4().hex[:8], split_payload=splitter())
        assert stress(store, ROUNDS // 2) == []
        store.check()
        store.close()
