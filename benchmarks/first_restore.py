"""The first restore and the first save of a process, as a command-line tool or a restarted app meets them.

Usage:
    python benchmarks/first_restore.py [--tokens 2000] [--runs 5] [--threads 2] [--bits 2]

Default model, f16 KV, flash attention. Each figure is the median over ``--runs`` fresh interpreters, each of which
loads the model, then times one call: llama.cpp's raw C path (``state.raw``), ``load_session`` / ``save_session`` of
a lossless and of a lossy snapshot (``bits``, ``model_profile=True``; its profile built before). Everything a
first call pays is in: imports done on first use, the model's fingerprint, thread pools, first-touch of buffers.
The session is the state ``restore_speed.py`` keeps in ``$SEQKV_HOME/kvdumps`` (made there when missing).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

ONE_CALL = r"""
import json, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
from seqkv_edge import SeqKV
from seqkv_edge.llama import Llama
from seqkv_edge.models import default_model_path
from seqkv_edge.state.raw import raw_restore, raw_save
import restore_speed as rs
what, op, path, n, threads, bits = {what!r}, {op!r}, {path!r}, {n}, {threads}, {bits}
llm = Llama(model_path=str(default_model_path()), n_ctx=n + 64, n_threads=threads, flash_attn=True, verbose=False)
if op == "save":
    rs.load_session_state(llm, rs.session_tokens(llm, n))
config = SeqKV(n_threads=threads) if what == "lossless" else SeqKV(kv="lossy", bits=bits, model_profile=True,
                                                                   n_threads=threads)
start = time.perf_counter()
if what == "raw C":
    raw_save(llm.ctx, path) if op == "save" else raw_restore(llm.ctx, path)
else:
    config.save(llm, path) if op == "save" else config.load(llm, path)
print(json.dumps(time.perf_counter() - start))
"""


def one_call(what: str, op: str, path: Path, args) -> float:
    code = ONE_CALL.format(root=str(ROOT), bench=str(ROOT / "benchmarks"), what=what, op=op, path=str(path),
                           n=args.tokens, threads=args.threads, bits=args.bits)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if run.returncode:
        raise SystemExit(f"{what} {op} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bits", type=float, default=2.0)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {what: Path(tmp) / name for what, name in
                 (("raw C", "raw.bin"), ("lossless", "s.seqkv"), ("lossy", "l.seqkv"))}
        for what, path in paths.items():
            one_call(what, "save", path, args)  # the file to restore; for lossy, its profile too
            saves = [one_call(what, "save", path, args) for _ in range(args.runs)]
            restores = [one_call(what, "restore", path, args) for _ in range(args.runs)]
            rows.append((what, statistics.median(saves), statistics.median(restores)))
    raw = rows[0]
    print(f"first call of a fresh process, {args.tokens:,} tokens, {args.threads} threads, median of {args.runs}:")
    print("| path | first save | vs raw C | first restore | vs raw C |")
    print("|---|---|---|---|---|")
    for what, save, restore in rows:
        print(f"| {what} | {save * 1e3:.1f} ms | {save / raw[1]:.2f}x | {restore * 1e3:.1f} ms "
              f"| {restore / raw[2]:.2f}x |")


if __name__ == "__main__":
    main()
