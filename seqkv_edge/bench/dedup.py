"""``seqkv bench --dedup``: the prefix store against separate session files and llama-cpp-python's
disk cache, prefix lookup latency, and time to first token with a cached chat history.

Three parts (each can be skipped):

- **dedup**: N sessions = one P-token prefix (the GPL-3 text) + distinct S-token suffixes (the
  other texts of ``/usr/share/common-licenses``, in S-token windows). The prefix is prefilled
  once; each session restores it and evaluates its own suffix, as an app would. Every session is
  saved three ways: session files (lossless, one per session), named sessions in a store
  (shared prefix stored once), and ``llama_cpp.LlamaDiskCache`` (pickled ``save_state()``, run on
  the first ``--disk-cache-sessions`` states and extrapolated: one entry carries
  ``n_batch x n_vocab`` float32 logits, ~311 MB on Qwen2.5). Target: store bytes <= 1.1 x (the
  prefix's file + the suffixes' share of the session files).
- **lookup**: longest-prefix latency with 10,000 stored synthetic sessions of 2,000 tokens
  (``benchmarks/trie_lookup.py``'s generator and timer). Target p99 <= 200 µs.
- **ttft**: a chat turn after a 2,000-token history: a fresh ``llama_cpp.Llama`` prefilling it all,
  vs one with ``SeqKVCache`` restoring the stored history. Target >= 10x faster.

On 2 cores with the default model, the default run (N=100) takes ~10 minutes, most of it
evaluating 100 suffixes; ``--sessions 5 --lookup-sessions 1000 --history-tokens 500`` is a quick run.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..config import SeqKV
from ..hardware import load_plain_llama

log = logging.getLogger(__name__)

LICENSES = Path("/usr/share/common-licenses")
DEDUP_TARGET, P99_TARGET_US, TTFT_TARGET = 1.1, 200.0, 10.0


def add_dedup_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``seqkv bench --dedup`` (``--model``, ``--n-ctx``, ``--threads`` come from bench)."""
    group = parser.add_argument_group("--dedup")
    group.add_argument("--sessions", type=int, default=100, help="N sessions sharing one prefix")
    group.add_argument("--prefix-tokens", type=int, default=1000)
    group.add_argument("--suffix-tokens", type=int, default=200)
    group.add_argument("--disk-cache-sessions", type=int, default=3,
                       help="states also put in LlamaDiskCache (each ~330 MB on disk), extrapolated to N")
    group.add_argument("--lookup-sessions", type=int, default=10_000)
    group.add_argument("--lookup-tokens", type=int, default=2_000)
    group.add_argument("--lookup-queries", type=int, default=5_000)
    group.add_argument("--history-tokens", type=int, default=2_000)
    group.add_argument("--skip", default="", help="comma list of parts to skip: dedup, lookup, ttft")


def _texts(llm, prefix_tokens: int, suffix_tokens: int, n_suffixes: int):
    gpl = (LICENSES / "GPL-3").read_text(errors="replace")
    prefix = llm.tokenize(gpl.encode())[:prefix_tokens]
    others = "\n\n".join(p.read_text(errors="replace") for p in sorted(LICENSES.iterdir())
                         if p.is_file() and not p.name.startswith("GPL-3"))
    pool = llm.tokenize(others.encode(), add_bos=False)
    if len(pool) < suffix_tokens * n_suffixes:
        log.warning("the suffix texts give %d tokens for %d x %d; windows overlap", len(pool), n_suffixes, suffix_tokens)
    step = max(1, min(suffix_tokens, (len(pool) - suffix_tokens) // max(n_suffixes, 1)))
    suffixes = [pool[i * step:i * step + suffix_tokens] for i in range(n_suffixes)]
    return prefix, suffixes, f"prefix: {LICENSES / 'GPL-3'}; suffixes: the other files of {LICENSES}"


def _llama(args, **kw):
    from ..llama import Llama

    return Llama(model_path=args.model, n_ctx=args.n_ctx, n_threads=args.threads, verbose=False,
                 kv_compressor=SeqKV(n_threads=args.threads), **kw)


def bench_dedup(args, workdir: Path) -> dict:
    import llama_cpp

    from ..sessions.named import (
        load_named,
        open_session_store,
        restore_blob,
        save_named,
    )
    from ..sessions.prefill import prefill
    from ..state.blob import read_seq_state

    llm = _llama(args)
    prefix, suffixes, text_name = _texts(llm, args.prefix_tokens, args.suffix_tokens, args.sessions)
    prefill_s = prefill(llm, prefix, desc="prefill shared prefix")
    prefix_blob = bytes(read_seq_state(llm.ctx))
    prefix_file = llm.kv_compressor.save(llm, workdir / "prefix.seqkv").file_bytes
    store = open_session_store(workdir / "store", n_threads=args.threads)
    disk = llama_cpp.LlamaDiskCache(str(workdir / "disk"), capacity_bytes=1 << 42)
    files = raw = 0
    disk_entries, seconds = min(args.disk_cache_sessions, args.sessions), {"suffix_eval": 0.0, "file": 0.0, "store": 0.0}
    started = time.perf_counter()
    for i, suffix in enumerate(tqdm(suffixes, desc="sessions", unit="session")):
        restore_blob(llm, prefix_blob, np.array(prefix, np.int32))
        t = time.perf_counter()
        llm.eval(suffix)
        seconds["suffix_eval"] += time.perf_counter() - t
        t = time.perf_counter()
        info = llm.kv_compressor.save(llm, workdir / "s.seqkv")
        seconds["file"] += time.perf_counter() - t
        files, raw = files + info.file_bytes, raw + info.raw_bytes
        t = time.perf_counter()
        save_named(llm, store, f"chat-{i}")
        seconds["store"] += time.perf_counter() - t
        if i < disk_entries:
            with contextlib.redirect_stderr(io.StringIO()):  # LlamaDiskCache prints on every put
                disk[tuple(llm.input_ids[:llm.n_tokens].tolist())] = llm.save_state()
        last_blob = bytes(read_seq_state(llm.ctx))
    total_s = time.perf_counter() - started
    fresh = _llama(args)
    loaded = load_named(fresh, store, f"chat-{args.sessions - 1}")
    exact = bytes(read_seq_state(fresh.ctx)) == last_blob and loaded.replayed_tokens == 0
    stored = store.stats().payload_bytes
    on_disk = sum(p.stat().st_size for p in (workdir / "store").rglob("*") if p.is_file())
    disk_bytes = disk.cache_size
    disk.cache.close()
    ideal = prefix_file + (files - args.sessions * prefix_file)  # one prefix + N suffixes, as the file codec codes them
    return {
        "text": text_name, "sessions": args.sessions, "prefix_tokens": len(prefix), "suffix_tokens": args.suffix_tokens,
        "prefix_prefill_s": prefill_s, "seconds": {**seconds, "total": total_s},
        "raw_state_bytes": raw, "file_bytes": files, "prefix_file_bytes": prefix_file, "ideal_bytes": ideal,
        "store_chunk_bytes": stored, "store_dir_bytes": on_disk,
        "disk_cache_entries": disk_entries, "disk_cache_bytes_measured": disk_bytes,
        "disk_cache_bytes": disk_bytes / max(disk_entries, 1) * args.sessions,
        "store_vs_ideal": stored / ideal, "restore_bit_exact": exact,
    }


def _trie_lookup_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "trie_lookup.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("seqkv_trie_lookup", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_lookup(args, workdir: Path) -> dict:
    from ..store import SQLiteStore

    tl = _trie_lookup_module()
    if tl is None:
        return {"skipped": "benchmarks/trie_lookup.py is not there (run from a source checkout)"}
    synth = argparse.Namespace(sessions=args.lookup_sessions, tokens=args.lookup_tokens, prompts=100,
                               prompt_tokens=min(500, args.lookup_tokens // 2), scan_queries=20)
    rng = np.random.default_rng(0)
    sessions = tl.make_sessions(synth, rng)
    queries = tl.make_queries(sessions, args.lookup_queries, synth.prompt_tokens, rng)
    _, rows = tl.bench_trie(sessions, queries, synth)
    store = SQLiteStore(workdir / "lookup", durable=False, split_payload=tl.split_bytes)
    insert, row = tl.bench_store(store, sessions, queries, "SQLiteStore.longest_prefix (what SeqKVCache calls)")
    store.close()
    header = ("lookup", "stored sessions", "p50 µs", "p99 µs", "max µs", "p99 target")
    return {"sessions": len(sessions), "tokens": args.lookup_tokens, "queries": len(queries),
            "insert_s": insert[2], "rows": [dict(zip(header, r)) for r in rows + [row]]}


def bench_ttft(args, workdir: Path) -> dict:
    from ..cache import SeqKVCache
    from ..sessions.named import open_session_store

    gpl = (LICENSES / "GPL-3").read_text(errors="replace")
    vocab = load_plain_llama(model_path=args.model, vocab_only=True, verbose=False)
    history = vocab.tokenize(gpl.encode())[: args.history_tokens]
    question = vocab.tokenize(b"\n\nQuestion: what does this license say about patents?\nAnswer:", add_bos=False)
    del vocab

    def first_token_s(llm) -> float:
        start = time.perf_counter()
        stream = llm.create_completion(history + question, max_tokens=4, temperature=0.0, stream=True)
        next(iter(stream))
        elapsed = time.perf_counter() - start
        for _ in stream:  # finish the turn (the cache stores it afterwards)
            pass
        return elapsed

    def new_llama():
        return load_plain_llama(model_path=args.model, n_ctx=args.n_ctx, n_threads=args.threads, verbose=False)

    cold = first_token_s(new_llama())
    store = open_session_store(workdir / "ttft", n_threads=args.threads)
    writer = new_llama()
    writer.eval(history)  # an earlier turn left the history in the store
    SeqKVCache(store, writer)[history] = writer.save_state()
    del writer
    reader = new_llama()
    cache = SeqKVCache(store, reader)
    reader.set_cache(cache)
    warm = first_token_s(reader)
    return {"history_tokens": len(history), "question_tokens": len(question), "ttft_no_cache_s": cold,
            "ttft_cached_s": warm, "speedup": cold / warm, "cache_hits": cache.counters.hits,
            "hit_tokens": cache.counters.hit_tokens, "stored_bytes": store.stats().payload_bytes}


def run_dedup_bench(args) -> dict:
    """Run the parts not in ``args.skip``; returns their figures (``format_report`` prints them)."""
    skip = {part for part in args.skip.split(",") if part}
    from ..models import model_path

    args.model = model_path(getattr(args, "model", None))
    workdir = Path(tempfile.mkdtemp(prefix="seqkv-dedup-"))
    result = {"model": args.model}
    try:
        if "dedup" not in skip:
            result["dedup"] = bench_dedup(args, workdir)
        if "lookup" not in skip:
            result["lookup"] = bench_lookup(args, workdir)
        if "ttft" not in skip:
            result["ttft"] = bench_ttft(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def _table(title: str, header, rows) -> str:
    rows = [[str(c) for c in row] for row in rows]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    lines = [title, "  ".join(str(h).ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows])


def format_report(result: dict) -> str:
    out = [f"model: {result['model']}"]
    if "dedup" in result:
        d = result["dedup"]
        n = d["sessions"]
        ok = "ok" if d["store_chunk_bytes"] <= DEDUP_TARGET * d["ideal_bytes"] else "MISSED"
        rows = [
            ("llama.cpp raw sequence states", f"{d['raw_state_bytes']:,}", f"{d['raw_state_bytes'] / d['store_chunk_bytes']:.1f}x", ""),
            (f"LlamaDiskCache (measured on {d['disk_cache_entries']}, x{n}/{d['disk_cache_entries']})",
             f"{d['disk_cache_bytes']:,.0f}", f"{d['disk_cache_bytes'] / d['store_chunk_bytes']:.1f}x", ""),
            ("separate session files (lossless)", f"{d['file_bytes']:,}", f"{d['file_bytes'] / d['store_chunk_bytes']:.1f}x", ""),
            ("ideal: one prefix file + N suffix shares", f"{d['ideal_bytes']:,}", f"{d['ideal_bytes'] / d['store_chunk_bytes']:.2f}x", ""),
            ("seqkv store: chunk bytes", f"{d['store_chunk_bytes']:,}", "1.0x",
             f"{d['store_vs_ideal']:.3f} x ideal <= {DEDUP_TARGET}: {ok}"),
            ("seqkv store: directory on disk", f"{d['store_dir_bytes']:,}", f"{d['store_dir_bytes'] / d['store_chunk_bytes']:.2f}x", ""),
        ]
        s = d["seconds"]
        out.append(_table(
            f"\nDedup: {n} sessions = one {d['prefix_tokens']:,}-token prefix + distinct {d['suffix_tokens']}-token "
            f"suffixes ({d['text']})", ("stored as", "bytes", "vs store", "target"), rows))
        out.append(f"time: prefix prefill {d['prefix_prefill_s']:.1f}s; {n} sessions {s['total']:.1f}s "
                   f"(suffix eval {s['suffix_eval']:.1f}s, session files {s['file']:.1f}s, store {s['store']:.1f}s); "
                   f"last session restored bit-exact: {d['restore_bit_exact']}")
    if "lookup" in result:
        lk = result["lookup"]
        if "skipped" in lk:
            out.append(f"\nLookup: skipped, {lk['skipped']}")
        else:
            header = list(lk["rows"][0])
            out.append(_table(f"\nLongest-prefix lookup: {lk['sessions']:,} synthetic sessions of {lk['tokens']:,} tokens, "
                              f"{lk['queries']:,} queries; target p99 <= {P99_TARGET_US:.0f} µs",
                              header, [list(r.values()) for r in lk["rows"]]))
    if "ttft" in result:
        t = result["ttft"]
        ok = "ok" if t["speedup"] >= TTFT_TARGET else "MISSED"
        out.append(_table(
            f"\nTime to first token: {t['history_tokens']:,}-token history (GPL-3) + {t['question_tokens']}-token question",
            ("history", "seconds", "speedup", f"target >= {TTFT_TARGET:.0f}x"),
            [("prefilled (no cache)", f"{t['ttft_no_cache_s']:.2f}", "1x", ""),
             (f"restored by SeqKVCache ({t['hit_tokens']:,} tokens, {t['cache_hits']} hit)", f"{t['ttft_cached_s']:.2f}",
              f"{t['speedup']:.1f}x", ok)]))
    return "\n".join(out)
