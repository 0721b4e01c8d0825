"""The Redis store against a real ``redis-server`` on a loopback port (skipped when not installed)."""
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from redis_server import RedisServer, redis_available  # noqa: E402
from test_store_sqlite import (  # noqa: E402
    assert_consistent,
    assert_readable,
    ints,
    put,
    splitter,
    start_worker,
)

from seqkv_edge.errors import SeqKVError, StoreFullError, StoreUnavailableError  # noqa: E402
from seqkv_edge.store import RedisStore  # noqa: E402

pytestmark = pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")


@pytest.fixture(scope="module")
def server():
    with RedisServer() as running:
        yield running


def open_store(url, **options) -> RedisStore:
    options.setdefault("namespace", uuid.uuid4().hex[:8])  # a fresh store per test
    options.setdefault("split_payload", splitter())
    return RedisStore(url, **options)


def test_many_sessions_dedup_and_a_second_client(server):
    rng = np.random.default_rng(0)
    store = open_store(server.url)
    prompts = [ints(rng, 200) for _ in range(10)]
    sessions = {
        f"s{i}": np.concatenate([prompts[i % 10][: rng.integers(50, 200)], ints(rng, 30)])
        for i in range(200)
    }
    for name, tokens in sessions.items():
        put(store, name, tokens)
    stats = store.stats()
    assert stats.sessions == 200 and stats.payload_bytes == 4 * stats.tokens
    assert stats.tokens < 0.45 * sum(len(t) for t in sessions.values())
    other = RedisStore(server.url, namespace=store._p[1:-2])  # another process's view
    assert other.stats() == stats
    for name, tokens in list(sessions.items())[::7]:
        assert other.longest_prefix(tokens).length == len(tokens)
        assert_readable(other, name, tokens)
    for name in list(sessions)[::2]:
        other.delete_session(name)
    store.check()
    assert store.stats().sessions == 100
    for name in list(sessions)[1::20]:
        assert_readable(store, name, sessions[name])


def test_split_and_stats_round_trip(server):
    rng = np.random.default_rng(1)
    store = open_store(server.url)
    a = ints(rng, 100)
    bits = rng.uniform(0, 10, 100)
    put(store, "a", a, surprisal_bits=bits)
    b = np.concatenate([a[:40], ints(rng, 5, 60_000, 61_000)])
    put(store, "b", b, surprisal_bits=np.concatenate([bits[:40], np.ones(5)]))
    head, tail = store.node_stats(store.get_session("a").node_ids)
    assert head.weight_bits == pytest.approx(bits[:40].sum())
    assert tail.weight_bits == pytest.approx(bits[40:].sum())
    assert store.get_payloads([head.node_id, tail.node_id]) == [a[:40].tobytes(), a[40:].tobytes()]
    assert store.node_stats([head.node_id])[0].hits == head.hits + 1
    store.check()


def test_pins_hold_across_clients(server):
    rng = np.random.default_rng(5)
    store = open_store(server.url)
    other = RedisStore(server.url, namespace=store._p[1:-2])
    for name in ("a", "b"):
        put(store, name, ints(rng, 50))
    with store.pin(store.get_session("a").node_ids):
        assert other.evict(0) == ["b"]
    assert other.evict(0) == ["a"]
    assert other.stats().payload_bytes == 0
    store.check()


def test_a_server_that_lost_its_data_gives_an_empty_store(tmp_path):
    rng = np.random.default_rng(6)
    with RedisServer("--appendonly", "no", directory=tmp_path) as server:
        store = open_store(server.url, lookup_staleness_s=0)
        tokens = ints(rng, 50)
        put(store, "a", tokens)
        server.restart(kill=True)  # no persistence: everything is gone
        assert store.list_sessions() == [] and store.longest_prefix(tokens).length == 0
        put(store, "b", tokens)
        assert_readable(store, "b", tokens)
        store.check()


def test_two_writer_processes(server):
    url = server.url.replace("/0", "/1")  # its own database: workers use the default namespace
    workers = [start_worker(url, "write", seed, 30) for seed in (1, 2)]
    for worker in workers:
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
    store = RedisStore(url)
    names = assert_consistent(store)
    assert names == sorted(f"w{seed}-{i}" for seed in (1, 2) for i in range(30))


def test_server_restart_mid_run(tmp_path):
    """A writer keeps saving while the server is killed and restarted: it gets clear errors while
    the server is down, nothing is half-written, and it carries on afterwards."""
    rng = np.random.default_rng(2)
    with RedisServer(directory=tmp_path) as server:
        store = open_store(server.url, timeout_s=1.0)
        prompt = ints(rng, 100)
        outcomes = {"saved": [], "unavailable": 0, "other": []}
        stop = threading.Event()

        def writer():
            i = 0
            while not stop.is_set():
                tokens = np.concatenate([prompt[: rng.integers(10, 100)], ints(rng, 20)])
                started = time.monotonic()
                try:
                    put(store, f"s{i}", tokens)
                    outcomes["saved"].append((f"s{i}", tokens, started, time.monotonic()))
                except StoreUnavailableError:
                    outcomes["unavailable"] += 1
                    time.sleep(0.01)
                except Exception as error:  # anything else is a bug
                    outcomes["other"].append(repr(error))
                i += 1

        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(0.2)
        server.stop(kill=True)
        down_at = time.monotonic()
        time.sleep(0.3)
        with pytest.raises(StoreUnavailableError, match="unreachable"):
            store.longest_prefix(prompt)
        server.start()
        up_at = time.monotonic()
        time.sleep(0.3)
        stop.set()
        thread.join()
        assert outcomes["other"] == [] and outcomes["unavailable"] > 0
        assert any(end > up_at for *_, end in outcomes["saved"])  # works again after the restart
        # no save begun while the server was down came back as done before it was up (one begun just before
        # the kill may finish just after it: that is no error)
        assert not any(down_at < start and end < up_at for *_, start, end in outcomes["saved"])
        names = assert_consistent(store)
        for name, tokens, *_ in outcomes["saved"]:  # every acknowledged save survived the kill
            assert name in names
            assert_readable(store, name, tokens)


def test_full_server_refuses_saves_clearly_and_still_deletes(tmp_path):
    rng = np.random.default_rng(3)
    with RedisServer("--maxmemory", "3mb", "--maxmemory-policy", "noeviction", directory=tmp_path) as server:
        store = open_store(server.url)
        saved = []
        with pytest.raises(StoreFullError, match="full"):
            for i in range(400):
                put(store, f"s{i}", ints(rng, 5000))  # 20 KB chunks
                saved.append(f"s{i}")
        assert 0 < len(saved) < 400
        assert assert_consistent(store) == sorted(saved)
        for name in saved[: len(saved) // 2]:  # deletions work on a full server
            store.delete_session(name)
        put(store, "after", ints(rng, 5000))
        assert_consistent(store)


def test_own_budget_evicts_before_the_server_fills(server):
    rng = np.random.default_rng(4)
    store = open_store(server.url, budget_bytes=40_000)
    evicted = []
    for i in range(20):
        evicted += put(store, f"s{i}", ints(rng, 2000, 1000 * i, 1000 * i + 999)).evicted_sessions
        assert store.stats().payload_bytes <= 40_000
    assert evicted == [f"s{i}" for i in range(15)]
    with pytest.raises(StoreFullError, match="store full"):
        put(store, "huge", ints(rng, 10_001))
    assert_consistent(store)


def test_a_server_that_evicts_keys_itself_is_refused(server):
    import redis

    client = redis.Redis.from_url(server.url)
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(SeqKVError, match="noeviction"):
            open_store(server.url)
    finally:
        client.config_set("maxmemory-policy", "noeviction")
