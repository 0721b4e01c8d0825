"""Prefix lookup latency, insert throughput and dedup bytes of the session store.

Synthetic tokens (uniform ids below 150,000; no text needed): ``--prompts`` shared system prompts
of ``--prompt-tokens`` tokens, each session one of them plus a random suffix up to
``--tokens`` tokens. Lookups mix three kinds of query, as a chat server sees them: a stored
session continued with 100 new tokens, a new chat on a known system prompt, and a stored
session's first half. The baseline is the scan llama-cpp-python's ``LlamaRAMCache`` /
``LlamaDiskCache`` do (common prefix with every stored key), timed on a few queries.

Dedup: N sessions sharing a 1,000-token prefix with distinct 200-token suffixes, chunks of
10 bytes per token, stored in the SQLite store vs N separate copies.

    python benchmarks/trie_lookup.py                       # 10,000 x 2,000 tokens (~1 min, 2 cores)
    python benchmarks/trie_lookup.py --store-sessions 0    # in-memory trie only (seconds)
    python benchmarks/trie_lookup.py --redis               # also the Redis store (starts redis-server)
"""
from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from seqkv_edge.store import RadixTrie, SQLiteStore

VOCAB = 150_000
P99_TARGET_US = 200.0


def make_sessions(args, rng) -> list[np.ndarray]:
    prompts = [rng.integers(0, VOCAB, args.prompt_tokens).astype(np.int32) for _ in range(args.prompts)]
    suffix_tokens = args.tokens - args.prompt_tokens
    return [
        np.concatenate([prompts[i % args.prompts], rng.integers(0, VOCAB, suffix_tokens)]).astype(np.int32)
        for i in range(args.sessions)
    ]


def make_queries(sessions, count, prompt_tokens, rng) -> list[np.ndarray]:
    queries = []
    for k in range(count):
        session = sessions[rng.integers(len(sessions))]
        kind = k % 3
        if kind == 0:  # a stored chat continued
            queries.append(np.concatenate([session, rng.integers(0, VOCAB, 100)]).astype(np.int32))
        elif kind == 1:  # a new chat on a known system prompt
            queries.append(np.concatenate([session[:prompt_tokens], rng.integers(0, VOCAB, 300)]).astype(np.int32))
        else:  # an earlier point of a stored chat
            queries.append(session[: len(session) // 2].copy())
    return queries


def latencies_us(lookup, queries) -> np.ndarray:
    for query in queries[:50]:  # warm caches and the JIT
        lookup(query)
    times = np.empty(len(queries))
    for k, query in enumerate(queries):
        start = time.perf_counter_ns()
        lookup(query)
        times[k] = (time.perf_counter_ns() - start) / 1000
    return times


def scan_baseline(sessions, query) -> int:
    """llama-cpp-python's cache lookup: the common prefix length with every stored key."""
    best = 0
    for key in sessions:
        n = min(len(key), len(query))
        differ = np.flatnonzero(key[:n] != query[:n])
        best = max(best, int(differ[0]) if differ.size else n)
    return best


def latency_row(what, times, n_sessions) -> tuple:
    p50, p99 = np.percentile(times, [50, 99])
    verdict = "" if not np.isfinite(P99_TARGET_US) else ("ok" if p99 <= P99_TARGET_US else "MISSED")
    return (what, f"{n_sessions:,}", f"{p50:,.1f}", f"{p99:,.1f}", f"{times.max():,.1f}", verdict)


def bench_trie(sessions, queries, args):
    ids = itertools.count(1)
    RadixTrie().insert(sessions[0], lambda: next(ids))  # load the compiled kernels first
    trie = RadixTrie()
    start = time.perf_counter()
    for tokens in sessions:
        trie.insert(tokens, lambda: next(ids))
    insert_s = time.perf_counter() - start
    for query in queries[:6]:  # the index answers exactly what a scan answers
        assert trie.match(query)[0] == scan_baseline(sessions, query)
    times = latencies_us(trie.match, queries)
    scan = latencies_us(lambda q: scan_baseline(sessions, q), queries[: args.scan_queries])
    insert = ("in-memory RadixTrie", len(sessions), insert_s, len(trie), trie.token_count)
    return insert, [latency_row("in-memory RadixTrie", times, len(sessions)),
                    latency_row("baseline: scan every key", scan, len(sessions))]


def split_bytes(payload: bytes, start: int, k: int, n_tokens: int) -> tuple[bytes, bytes]:
    """Chunks of 1 byte per token in the lookup benchmark."""
    return payload[:k], payload[k:]


def bench_store(store, sessions, queries, label):
    payload_width = 1  # bytes per token: lookups do not depend on chunk size
    start = time.perf_counter()
    for i, tokens in enumerate(tqdm(sessions, desc=f"saving to {label}", leave=False)):
        store.put_session(f"s{i}", tokens, lambda a, b: bytes(payload_width * (b - a)))
    insert_s = time.perf_counter() - start
    times = latencies_us(store.longest_prefix, queries)
    stats = store.stats()
    insert = (label, len(sessions), insert_s, stats.nodes, stats.tokens)
    return insert, latency_row(label, times, len(sessions))


def bench_stores(stored, args, rng):
    if not stored:
        return
    queries = make_queries(stored, args.queries, args.prompt_tokens, rng)
    directory = Path(tempfile.mkdtemp(prefix="seqkv-bench-"))
    try:
        store = SQLiteStore(directory, durable=False, split_payload=split_bytes)
        yield bench_store(store, stored, queries, "SQLiteStore (generation checked every call)")
        store.close()
        start = time.perf_counter()
        reopened = SQLiteStore(directory)
        print(f"reopening the SQLite store (trie rebuilt from {reopened.stats().nodes:,} nodes): "
              f"{time.perf_counter() - start:.2f} s")
        reopened.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if args.redis:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from redis_server import RedisServer

        from seqkv_edge.store import RedisStore

        with RedisServer("--appendonly", "no") as server:
            store = RedisStore(server.url, split_payload=split_bytes)
            every_ms = store.lookup_staleness_s * 1e3
            yield bench_store(store, stored, queries, f"RedisStore (generation checked every {every_ms:.0f} ms)")


def dedup_rows(n_sessions: int, rng) -> list[tuple]:
    width, prefix_len, suffix_len = 10, 1000, 200
    directory = Path(tempfile.mkdtemp(prefix="seqkv-dedup-"))
    try:
        store = SQLiteStore(directory, split_payload=lambda p, s, k, n: (p[: width * k], p[width * k :]))
        prefix = rng.integers(0, VOCAB, prefix_len).astype(np.int32)
        for i in range(n_sessions):
            suffix = rng.integers(0, VOCAB, suffix_len).astype(np.int32)
            suffix[0] = VOCAB + i  # suffixes share nothing
            tokens = np.concatenate([prefix, suffix])
            store.put_session(f"chat-{i}", tokens, lambda a, b: bytes(width * (b - a)))
        stored = store.stats().payload_bytes
        store.close()
        on_disk = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    separate = n_sessions * width * (prefix_len + suffix_len)
    bound = 1.1 * width * (prefix_len + n_sessions * suffix_len)
    return [
        ("separate session files", f"{separate:,}", f"{1.0:.3f}", ""),
        ("store: chunk payload bytes", f"{stored:,}", f"{stored / separate:.3f}",
         f"<= {bound:,.0f}: {'ok' if stored <= bound else 'MISSED'}"),
        ("store: directory on disk (index + files)", f"{on_disk:,}", f"{on_disk / separate:.3f}", ""),
    ]


def print_table(title, header, rows) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    print(f"\n{title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--tokens", type=int, default=2_000)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--prompt-tokens", type=int, default=500)
    parser.add_argument("--queries", type=int, default=5_000)
    parser.add_argument("--scan-queries", type=int, default=20)
    parser.add_argument("--store-sessions", type=int, default=10_000,
                        help="sessions saved into the SQLite store (0: skip the store)")
    parser.add_argument("--redis", action="store_true", help="also bench a RedisStore on a local redis-server")
    parser.add_argument("--dedup-sessions", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    sessions = make_sessions(args, rng)
    queries = make_queries(sessions, args.queries, args.prompt_tokens, rng)
    insert_rows, latency_rows = [], []
    insert, rows = bench_trie(sessions, queries, args)
    insert_rows.append(insert)
    latency_rows += rows

    for insert, row in bench_stores(sessions[: args.store_sessions], args, rng):
        insert_rows.append(insert)
        latency_rows.append(row)

    print_table(
        f"Insert: {args.sessions:,} sessions of {args.tokens:,} tokens, {args.prompts} shared prompts "
        f"of {args.prompt_tokens} tokens (stores: durable=False, 1 byte/token chunks)",
        ("index", "sessions", "seconds", "sessions/s", "M tokens/s", "nodes", "distinct tokens"),
        [(what, f"{n:,}", f"{s:.2f}", f"{n / s:,.0f}", f"{n * args.tokens / s / 1e6:.2f}", f"{nodes:,}", f"{tokens:,}")
         for what, n, s, nodes, tokens in insert_rows],
    )
    print_table(
        f"Longest-prefix lookup latency, {args.queries:,} queries (baseline: {args.scan_queries}); "
        f"target p99 <= {P99_TARGET_US:.0f} µs",
        ("lookup", "stored sessions", "p50 µs", "p99 µs", "max µs", "p99 target"),
        latency_rows,
    )
    print_table(
        f"Dedup: {args.dedup_sessions} sessions = one 1,000-token prefix + distinct 200-token suffixes, "
        "10 bytes/token",
        ("stored as", "bytes", "vs separate", "target 1.1 x (prefix + N suffixes)"),
        dedup_rows(args.dedup_sessions, rng),
    )


if __name__ == "__main__":
    main()
