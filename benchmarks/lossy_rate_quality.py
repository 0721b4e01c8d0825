"""Rate-quality of lossy KV snapshots, side by side on the same KV and the same harness.

The same run as ``seqkv bench --tiers lossy`` (``seqkv_edge.bench.lossy``), with the options of a study: older
formats beside the current one, only our rows, chosen rates.

    python benchmarks/lossy_rate_quality.py [--model M] [--text T] [--out DIR] [--quick] [--v2] [--v1]
                                            [--ours-only] [--bits 1,2,3]

Prints a table and writes ``DIR/lossy_rate_quality.json`` and ``.csv`` (one row per method and rate).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seqkv_edge.bench.lossy import OURS_BITS, TURBO_BITS, run_lossy_bench, write_curve  # noqa: E402


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
    ours, turbo, n_greedy = OURS_BITS, TURBO_BITS, args.n_greedy
    if args.quick:
        ours, turbo, n_greedy = (1.0, 2.0, 3.0), (2, 3), 0
    if args.bits:
        ours = tuple(float(b) for b in args.bits.split(","))
    model = args.model
    if model is None:
        from seqkv_edge.models import default_model_path

        model = default_model_path()
    versions = [v for v, on in ((2, args.v2), (1, args.v1)) if on]
    rows = run_lossy_bench(model, args.text, n_context=args.n_context, n_eval=args.n_eval, n_greedy=n_greedy,
                           ours_bits=ours, turbo_bits=turbo, versions=versions, ours_only=args.ours_only,
                           show=print)
    print(f"wrote {write_curve(rows, args.out)} and .csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
