"""Prefill and one-token decode speed of a model with llama.cpp's weight repack on or off (AMX CPUs: off by default).

Usage:
    python benchmarks/cpu_speed.py [--repack on|off|auto] [--prefill 512] [--decode 64] [--threads 2] [--model GGUF]

Prefill: one batched eval of the first --prefill tokens of the GPL-3 text (0 skips it: with the AMX repack on, a
batched decode crashes on some AMX CPUs); decode: --decode one-token steps after the prompt (after one token when
the prefill is skipped). Prints tokens per second of each.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repack", choices=("on", "off", "auto"), default="auto")
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    from seqkv_edge import Llama
    from seqkv_edge.bench.snapshots import environment
    from seqkv_edge.models import default_model_path
    from seqkv_edge.textdata import read_text

    repack = {"on": True, "off": False, "auto": None}[args.repack]
    llm = Llama(model_path=args.model or default_model_path(), n_ctx=args.prefill + args.decode + 8,
                n_threads=args.threads, verbose=False, weight_repack=repack)
    tokens = llm.tokenize(read_text()[0].encode())[:max(args.prefill, 1) + args.decode]
    line = f"repack {'on' if llm.model_params.use_extra_bufts else 'off'}, {args.threads} threads"
    if args.prefill:
        t0 = time.perf_counter()
        llm.eval(tokens[:args.prefill])
        line += f", prefill {args.prefill / (time.perf_counter() - t0):.1f} tok/s ({args.prefill} tokens)"
    else:
        llm.eval(tokens[:1])
    start = max(args.prefill, 1)
    t0 = time.perf_counter()
    for token in tokens[start:start + args.decode]:
        llm.eval([token])
    line += f", decode {args.decode / (time.perf_counter() - t0):.1f} tok/s ({args.decode} one-token steps)"
    print(line, "|", environment(args.threads)["cpu"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
