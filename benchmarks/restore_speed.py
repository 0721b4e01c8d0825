"""Restore and save speed against llama.cpp's own C path, side by side in one run.

Usage:
    python benchmarks/restore_speed.py [--tokens 2000,8192] [--reps 5] [--threads 2] [--bits 2]
                                       [--prefill-tokens 2000] [--replay-tokens 256] [--json FILE]

Default model, f16 KV with flash attention, ``--threads`` for llama.cpp and the codecs. The session is the first
N tokens of GPL-3 followed by GPL-2 (Debian base-files); its state is prefilled once and kept in
``$SEQKV_HOME/kvdumps/restore_fa_f16_N.bin``, then loaded into the context before the saves.

Restores, each into an emptied context (what a fresh process restoring a session does):

- raw C: the raw sequence state file read with one ``readinto`` into a reused buffer, then
  ``llama_state_seq_set_data`` (llama-server's slot restore);
- ``load_session`` of a lossless and of a lossy snapshot (``bits``, ``model_profile=True``);

each with the page cache warm (best and median of ``--reps``) and cold (the file's pages dropped with
``posix_fadvise(DONTNEED)`` before each restore; median). Saves: raw C (``llama_state_seq_get_data`` into a
reused buffer, write, fsync) against ``save_session`` lossless and lossy. ``load_session`` and ``save_session``
steps (``SessionInfo.seconds``) are printed as medians.

Token tiers: ``load_session`` of a tokens-only file against the compute it replays, on the same context:
a portable file (batched prefill) against a plain ``Llama.eval`` prefill of the same tokens, and a model-coded
file (one-token steps) against plain one-token evals of the same tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from seqkv_edge import SeqKV  # noqa: E402
from seqkv_edge.bench.snapshots import environment  # noqa: E402
from seqkv_edge.models import default_model_path, seqkv_home  # noqa: E402
from seqkv_edge.sessions.base import set_tokens  # noqa: E402
from seqkv_edge.sessions.prefill import prefill  # noqa: E402
from seqkv_edge.state import llama_api  # noqa: E402
from seqkv_edge.state.blob import read_seq_state, write_seq_state  # noqa: E402
from seqkv_edge.state.raw import raw_restore, raw_save  # noqa: E402

TEXTS = ("/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/GPL-2")


def session_tokens(llm, n_tokens: int) -> list[int]:
    tokens = []
    for path in TEXTS:
        tokens += llm.tokenize(Path(path).read_bytes(), add_bos=not tokens)
    if len(tokens) < n_tokens:
        raise SystemExit(f"the texts hold {len(tokens)} tokens, fewer than {n_tokens}")
    return tokens[:n_tokens]


def load_session_state(llm, tokens: list[int]) -> None:
    """Put the state of ``tokens`` into ``llm``: prefilled once, then read from the dump."""
    dump = seqkv_home() / "kvdumps" / f"restore_fa_f16_{len(tokens)}.bin"
    empty(llm)
    if not dump.is_file():
        prefill(llm, tokens, desc=f"prefill {len(tokens)} (once, kept in {dump})")
        dump.parent.mkdir(parents=True, exist_ok=True)
        dump.write_bytes(read_seq_state(llm.ctx))
        return
    write_seq_state(llm.ctx, dump.read_bytes())
    set_tokens(llm, tokens)


def empty(llm) -> None:
    llama_api.clear_cells(llm)
    llm.n_tokens = 0


def drop_pages(path) -> None:
    """Drop ``path``'s pages from the page cache (they are clean: every file here was fsynced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(fn, reps: int, before=None) -> list[float]:
    seconds = []
    for _ in range(reps):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def median_steps(infos) -> dict:
    keys = [key for key in infos[0].seconds if key != "total"]
    return {key: round(statistics.median(info.seconds[key] for info in infos), 4) for key in keys}


def bench_snapshots(llm, tokens, workdir: Path, reps: int, bits: float, threads: int) -> list[dict]:
    n = len(tokens)
    load_session_state(llm, tokens)
    original = bytes(read_seq_state(llm.ctx))
    raw_path = workdir / f"raw_{n}.bin"
    buffer = bytearray()
    save = {"raw C": timed(lambda: raw_save(llm.ctx, raw_path, buffer), reps)}
    configs = {"lossless": SeqKV(n_threads=threads),
               "lossy": SeqKV(kv="lossy", bits=bits, model_profile=True, n_threads=threads)}
    paths, save_infos = {"raw C": raw_path}, {}
    for name, config in configs.items():
        paths[name] = workdir / f"{name}_{n}.seqkv"
        config.save(llm, paths[name])  # warm-up: the lossy profile is loaded or built here
        infos = []
        save[name] = timed(lambda: infos.append(config.save(llm, paths[name])), reps)
        save_infos[name] = infos

    restore = {"raw C": lambda: raw_restore(llm.ctx, raw_path, buffer)}
    restore_infos = {name: [] for name in configs}
    for name, config in configs.items():
        restore[name] = (lambda c, p, out: lambda: out.append(c.load(llm, p)))(config, paths[name], restore_infos[name])
    rows = []
    for name, fn in restore.items():
        empty(llm)
        fn()  # warm-up
        exact = bytes(read_seq_state(llm.ctx)) == original
        warm = timed(fn, reps, before=lambda: empty(llm))
        cold = timed(fn, reps, before=lambda p=paths[name]: (empty(llm), drop_pages(p)))
        rows.append({"tokens": n, "what": name, "file_bytes": paths[name].stat().st_size,
                     "save_best": min(save[name]), "save_median": statistics.median(save[name]),
                     "warm_best": min(warm), "warm_median": statistics.median(warm),
                     "cold_best": min(cold), "cold_median": statistics.median(cold), "bit_exact": exact,
                     "save_steps": median_steps(save_infos[name]) if name in save_infos else {},
                     "restore_steps": median_steps(restore_infos[name][1:]) if name in restore_infos else {}})
    for row in rows:
        raw = rows[0]
        row.update(save_vs_raw=row["save_median"] / raw["save_median"],
                   warm_vs_raw=row["warm_median"] / raw["warm_median"],
                   cold_vs_raw=row["cold_median"] / raw["cold_median"])
    empty(llm)
    return rows


def bench_token_tiers(llm, tokens, workdir: Path, n_prefill: int, n_replay: int, threads: int) -> list[dict]:
    """load_session of tokens-only files against plain evals of the same tokens (one run each: seconds long)."""
    rows = []
    for tier, n in (("portable", n_prefill), ("model", n_replay)):
        if not n:
            continue
        part = tokens[:n]
        load_session_state(llm, part)
        config = SeqKV(kv="none", tokens=tier, n_threads=threads)
        path = workdir / f"tokens_{tier}_{n}.seqkv"
        config.save(llm, path)
        empty(llm)
        if tier == "portable":
            start = time.perf_counter()
            prefill(llm, part)
            plain = time.perf_counter() - start
        else:
            llm.reset()
            start = time.perf_counter()
            for token in part:
                llm.eval([token])
            plain = time.perf_counter() - start
        empty(llm)
        start = time.perf_counter()
        info = config.load(llm, path)
        ours = time.perf_counter() - start
        rows.append({"tier": tier, "tokens": n, "restored_by": info.restored_by, "plain_s": plain,
                     "load_session_s": ours, "ratio": ours / plain, "steps": info.seconds})
        empty(llm)
    return rows


def format_snapshots(rows: list[dict]) -> str:
    head = ("| tokens | path | file bytes | save (median) | vs raw C | restore warm (best / median) | vs raw C "
            "| restore cold (median) | vs raw C | bit-exact |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['tokens']:,} | {r['what']} | {r['file_bytes']:,} | {1e3 * r['save_median']:.1f} ms "
                     f"| {r['save_vs_raw']:.2f}x | {1e3 * r['warm_best']:.1f} / {1e3 * r['warm_median']:.1f} ms "
                     f"| {r['warm_vs_raw']:.2f}x | {1e3 * r['cold_median']:.1f} ms | {r['cold_vs_raw']:.2f}x "
                     f"| {r['bit_exact'] if r['what'] != 'lossy' else '-'} |")
    return "\n".join(lines)


def format_tiers(rows: list[dict]) -> str:
    lines = ["| tier | tokens | restored by | plain llama.cpp evals | load_session | ratio |", "|" + "---|" * 6]
    for r in rows:
        lines.append(f"| {r['tier']} | {r['tokens']:,} | {r['restored_by']} | {r['plain_s']:.2f} s "
                     f"| {r['load_session_s']:.2f} s | {r['ratio']:.3f}x |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", default="2000,8192", help="session lengths (comma-separated)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bits", type=float, default=2.0, help="lossy target bits per value")
    parser.add_argument("--prefill-tokens", type=int, default=2000, help="portable tier check (0: skip)")
    parser.add_argument("--replay-tokens", type=int, default=256, help="model tier check (0: skip)")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args()

    from seqkv_edge.llama import Llama

    lengths = [int(n) for n in args.tokens.split(",") if n]
    n_ctx = max(lengths + [args.prefill_tokens, args.replay_tokens]) + 256
    llm = Llama(model_path=default_model_path(), n_ctx=n_ctx, n_threads=args.threads, n_threads_batch=args.threads,
                flash_attn=True, verbose=False, kv_compressor=SeqKV(n_threads=args.threads))
    tokens = session_tokens(llm, max(lengths + [args.prefill_tokens, args.replay_tokens]))
    env = environment(args.threads)
    print(f"env: {env}")
    report = {"env": env, "args": vars(args), "snapshots": [], "tiers": []}
    with tempfile.TemporaryDirectory(dir=seqkv_home()) as tmp:
        for n in lengths:
            report["snapshots"] += bench_snapshots(llm, tokens[:n], Path(tmp), args.reps, args.bits, args.threads)
        print(f"\nsnapshots (f16 KV, flash attention, {args.threads} threads, {args.reps} runs; lossy: "
              f"{args.bits:g} bits, model profile):")
        print(format_snapshots(report["snapshots"]))
        for r in report["snapshots"]:
            if r["save_steps"]:
                print(f"{r['tokens']} {r['what']}: save steps {r['save_steps']}; restore steps {r['restore_steps']}")
        report["tiers"] = bench_token_tiers(llm, tokens, Path(tmp), args.prefill_tokens, args.replay_tokens,
                                            args.threads)
        if report["tiers"]:
            print("\ntoken tiers (one run each):")
            print(format_tiers(report["tiers"]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
