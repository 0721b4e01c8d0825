"""The tier table per known model: bytes per token of llama.cpp's state, the lossless ratio, the lossy tier's mean
KL and top-1 agreement at 1 and 2 bits per value (without and with the model's KV profile) and at its defaults
(``SeqKV(kv="lossy")``: the profile and ``max_kl=0.01``, with the bits per value that took), and the portable
token tier's bits per token.

Usage:
    python benchmarks/models_table.py [--models qwen2.5-coder-0.5b,smollm2-135m,gemma3-270m] [--texts A,B,C]
                                      [--context 1000] [--eval 128] [--json OUT]

Texts (default): /usr/share/common-licenses/MPL-2.0 and /usr/share/games/fortunes/{literature,people} (Debian
base-files and fortunes), none of them a calibration text of the KV profile, its predictors or the step weights.
KL: mean next-token KL (nats) over --eval teacher-forced tokens after --context tokens, against the lossless
cache, flash attention on, 2 threads; averaged over the texts.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEXTS = ("/usr/share/common-licenses/MPL-2.0", "/usr/share/games/fortunes/literature",
         "/usr/share/games/fortunes/people")


def model_rows(name: str, texts, n_context: int, n_eval: int) -> dict:
    from seqkv_edge.calibrate.profile import load_or_build_profile
    from seqkv_edge.calibrate.quality import QualityBench
    from seqkv_edge.codecs.kv_lossless import KVLosslessCodec
    from seqkv_edge.codecs.kv_lossy.codec import KVLossyCodec
    from seqkv_edge.codecs.tokens_portable import TokensPortableCodec
    from seqkv_edge.config import SeqKV
    from seqkv_edge.models import model_path

    path = model_path(name)
    config = SeqKV(kv="lossy")  # the defaults: the model's profile, and a KL target through its rate-quality table
    profile = load_or_build_profile(path)
    per_text = []
    for text in texts:
        bench = QualityBench(path, text, n_context=n_context, n_eval=n_eval, n_greedy=0)
        tensors = bench.state.tensors()
        raw_kv = sum(t.data.nbytes for t in tensors)
        lossless = sum(map(len, KVLosslessCodec().encode_state(bench.state)))
        tokens = np.asarray(bench.context, np.int32)
        portable = len(TokensPortableCodec(n_vocab=bench.ev.llm.n_vocab()).encode(tokens))
        found = {"state_bytes_per_token": len(bench.blob) / n_context, "lossless_ratio": raw_kv / lossless,
                 "portable_bits_per_token": 8 * portable / n_context}
        n_values = sum(t.n_cells * t.n_channels for t in tensors)
        settings = [(f"{label} {bits:g} bits", KVLossyCodec(bits=bits), prof)
                    for bits in (1.0, 2.0) for label, prof in (("no profile,", None), ("profile,", profile))]
        settings.append((f"default (max_kl {config.max_kl:g})", KVLossyCodec(max_kl=config.max_kl), profile))
        for label, codec, prof in settings:
            blob, coded = bench.lossy_blob(codec, profile=prof)
            result = bench.evaluate(blob)
            found[f"KL, {label}"] = result["kl_mean"]
            found[f"top-1, {label}"] = result["top1_agreement"]
        found[f"bits per value, default (max_kl {config.max_kl:g})"] = 8 * coded / n_values
        print(f"  {name} / {Path(text).name}: " + ", ".join(f"{k} {v:.4g}" for k, v in found.items()), flush=True)
        per_text.append(found)
    return {"model": name, **{k: float(np.mean([f[k] for f in per_text])) for k in per_text[0]}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="qwen2.5-coder-0.5b,smollm2-135m,gemma3-270m")
    parser.add_argument("--texts", default=",".join(TEXTS))
    parser.add_argument("--context", type=int, default=1000)
    parser.add_argument("--eval", type=int, default=128)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = [model_rows(name, args.texts.split(","), args.context, args.eval) for name in args.models.split(",")]
    keys = [k for k in rows[0] if k != "model"]
    print("\n| figure | " + " | ".join(r["model"] for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for key in keys:
        print(f"| {key} | " + " | ".join(f"{r[key]:.4g}" for r in rows) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
