"""Lossy KV tier with and without the model's per-head step weights (``seqkv_edge.calibrate.weights``), on several texts.

    python benchmarks/lossy_weights.py [--model M] [--bits 2] [--texts T1,T2,...] [--weights FILE] [--version 4]

For each text: one 1,000-token session, coded at ``--bits`` with the model profile, uniform steps vs the
weights (the shipped or calibrated ones, or ``--weights FILE`` from ``seqkv calibrate --out``), restored and
scored on the next 256 tokens (``seqkv_edge.calibrate.quality``); then the averages. The default texts are none of the
calibration texts of ``seqkv calibrate`` or of the KV profile's predictors. ``--version 3``: the payload format
without inter-layer prediction.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seqkv_edge.calibrate.profile import load_or_build_profile  # noqa: E402
from seqkv_edge.calibrate.quality import QualityBench  # noqa: E402
from seqkv_edge.codecs.kv_lossy.codec import FORMAT_VERSION, KVLossyCodec  # noqa: E402
from seqkv_edge.models import default_model_path  # noqa: E402

TEXTS = ("/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/MPL-2.0",
         "/usr/share/common-licenses/Apache-2.0", "/usr/share/games/fortunes/literature",
         "/usr/share/games/fortunes/people", "/usr/share/games/fortunes/wisdom")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model")
    p.add_argument("--bits", type=float, default=2.0)
    p.add_argument("--texts", help="comma list (default: GPL-3, MPL-2.0, Apache-2.0 and three fortune files)")
    p.add_argument("--weights", help="a weights file written by seqkv calibrate (default: the model's own)")
    p.add_argument("--version", type=int, default=FORMAT_VERSION, help="lossy payload format (2 and later)")
    p.add_argument("--n-context", type=int, default=1000)
    p.add_argument("--n-eval", type=int, default=256)
    args = p.parse_args(argv)
    model = args.model or default_model_path()
    profile = load_or_build_profile(model)
    weights = json.loads(Path(args.weights).read_text())["weights"] if args.weights else profile.step_weights
    if weights is None:
        p.error(f"{model} has no step weights: run seqkv calibrate --model {model} first")
    configs = {"uniform steps": {}, "step weights": weights}
    scores = {name: [] for name in configs}
    print(f"lossy KV format {args.version} at {args.bits:g} bits per value, model profile on; "
          "KL(exact || restored), top-1 agreement")
    print(f"{'text':12s} {'steps':14s} {'bits':>6s} {'KL mean':>8s} {'KL p99':>7s} {'top-1':>6s}")
    for text in (args.texts.split(",") if args.texts else TEXTS):
        bench = QualityBench(model, text, n_context=args.n_context, n_eval=args.n_eval, n_greedy=0)
        n_values = sum(t.n_cells * t.n_channels for t in bench.state.tensors())
        for name, w in configs.items():
            codec = KVLossyCodec(bits=args.bits, weights=w, version=args.version)
            blob, coded = bench.lossy_blob(codec, profile=profile)
            r = bench.evaluate(blob)
            scores[name].append((r["kl_mean"], r["top1_agreement"]))
            print(f"{Path(text).name:12s} {name:14s} {8 * coded / n_values:6.3f} {r['kl_mean']:8.4f} "
                  f"{r['kl_p99']:7.4f} {100 * r['top1_agreement']:5.1f}%", flush=True)
        del bench
    for name, rows in scores.items():
        kl, top1 = np.mean(rows, axis=0)
        print(f"{'average':12s} {name:14s} {'':6s} {kl:8.4f} {'':7s} {100 * top1:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
