"""Rate-quality of lossy KV snapshots, side by side on the same KV and the same harness.

Methods: our kv_lossy codec at several rates, the current format with the model's KV profile (per-head KLT bases,
finer recent window, static per-channel entropy models), format 2 (``--v2``: adaptive entropy models) and format 1
(``--v1``: per-channel, no profile); TurboQuant (peer package pyturboquant-cpu, per head vector,
16-bit norms counted); llama.cpp's own q8_0 / q4_0 cache types (a context of that type prefills the same
tokens, flash attention on, like the reference); the lossless tier (f16 exact). Quality is measured by
``seqkv_edge.quality`` against the f16 cache restored losslessly (flash attention on both sides).

    python benchmarks/lossy_rate_quality.py [--model M] [--text T] [--out DIR] [--quick]

Prints a table and writes ``DIR/lossy_rate_quality.json`` and ``.csv`` (one row per method and rate).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from turboquant_peer import turboquant_state  # noqa: E402

from seqkv_edge.codecs.kv_lossy import FORMAT_VERSION, KVLossyCodec  # noqa: E402
from seqkv_edge.kv_profile import load_or_build_profile  # noqa: E402
from seqkv_edge.quality import QualityBench  # noqa: E402

OURS_BITS = (1.0, 1.5, 2.0, 3.0, 4.0)
TURBO_BITS = (1, 1.5, 2, 2.5, 3, 4)
COLUMNS = ("method", "bits_per_value", "kl_mean", "kl_p99", "top1_agreement", "ppl_change",
           "greedy_agreement", "greedy_common_prefix", "seconds")


def run(args) -> list[dict]:
    model = args.model
    if model is None:
        from seqkv_edge.models import default_model_path

        model = default_model_path()
    bench = QualityBench(model, args.text, n_context=args.n_context, n_eval=args.n_eval, n_greedy=args.n_greedy)
    n_values = sum(t.n_cells * t.n_channels for t in bench.state.tensors())
    rows = []

    def add(method, bits, produce):
        t0 = time.perf_counter()
        result = produce()
        rows.append({"method": method, "bits_per_value": round(bits() if callable(bits) else bits, 4), **result,
                     "seconds": round(time.perf_counter() - t0, 2)})
        r = rows[-1]
        print(f"{method:24s} {r['bits_per_value']:7.3f} {r['kl_mean']:9.4f} {r['kl_p99']:8.3f} "
              f"{r['top1_agreement']:7.3f} {r['ppl_change']:+8.4f} {r['greedy_agreement']:7.3f}", flush=True)

    print(f"text: {bench.text_name}; {args.n_context} context tokens, {args.n_eval} teacher-forced, "
          f"{args.n_greedy} greedy; flash attention on both sides")
    print(f"{'method':24s} {'bits':>7s} {'KL mean':>9s} {'KL p99':>8s} {'top-1':>7s} {'d ppl':>8s} {'greedy':>7s}")
    add("lossless f16", 16.0, lambda: bench.evaluate(bench.blob))
    profile = load_or_build_profile(model)
    variants = [(f"kv_lossy v{FORMAT_VERSION}", FORMAT_VERSION, profile)]
    variants += [("kv_lossy v2", 2, profile)] if args.v2 else []
    variants += [("kv_lossy v1", 1, None)] if args.v1 else []
    for name, version, prof in variants:
        for bits in args.ours:
            codec = KVLossyCodec(bits=bits, version=version)
            holder = {}

            def ours(codec=codec, holder=holder, prof=prof):
                blob, coded = bench.lossy_blob(codec, profile=prof)
                holder["bits"] = 8 * coded / n_values
                return bench.evaluate(blob)

            add(f"seqkv {name} {bits:g}", lambda holder=holder: holder["bits"], ours)
    if args.ours_only:
        return rows
    for bits in args.turbo:
        holder = {}

        def turbo(bits=bits, holder=holder):
            blob, holder["bits"] = turboquant_state(bench.state, bits)
            return bench.evaluate(blob)

        add(f"TurboQuant peer {bits:g}", lambda holder=holder: holder["bits"], turbo)
    for cache_type, bits in (("q8_0", 8.5), ("q4_0", 4.5)):
        add(f"llama.cpp {cache_type}", bits, lambda ct=cache_type: bench.evaluate_cache_type(ct))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model")
    p.add_argument("--text", help="English plain text (default: /usr/share/common-licenses/GPL-3)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--n-context", type=int, default=1000)
    p.add_argument("--n-eval", type=int, default=256)
    p.add_argument("--n-greedy", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="fewer rates, no greedy run")
    p.add_argument("--v2", action="store_true", help="also format 2 (adaptive entropy models), side by side")
    p.add_argument("--v1", action="store_true", help="also format 1 (no model profile), side by side")
    p.add_argument("--ours-only", action="store_true", help="only seqkv's rows (no TurboQuant, no llama.cpp types)")
    p.add_argument("--bits", help="comma-separated rates for seqkv's rows (default 1,1.5,2,3,4)")
    args = p.parse_args(argv)
    args.ours, args.turbo = OURS_BITS, TURBO_BITS
    if args.quick:
        args.ours, args.turbo, args.n_greedy = (1.0, 2.0, 3.0), (2, 3), 0
    if args.bits:
        args.ours = tuple(float(b) for b in args.bits.split(","))
    rows = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lossy_rate_quality.json").write_text(json.dumps(rows, indent=2))
    with open(out / "lossy_rate_quality.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out / 'lossy_rate_quality.json'} and .csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
