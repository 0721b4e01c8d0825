"""Rate-quality of lossy KV snapshots, side by side on the same KV and the same harness (``seqkv bench --tiers lossy``).

Methods: our kv_lossy codec at several rates (the current format with the model's KV profile; optionally format 2,
adaptive entropy models, and format 1, per-channel without a profile); TurboQuant (peer package pyturboquant-cpu,
per head vector, 16-bit norms counted, ``seqkv_edge.bench.turboquant_peer``); llama.cpp's own q8_0 / q4_0 cache types (a
context of that type prefills the same tokens, flash attention on, like the reference); the lossless tier (f16
exact). Quality is ``seqkv_edge.calibrate.quality``'s: KL of the next-token distributions against the f16 cache restored
losslessly, top-1 agreement, perplexity change, greedy agreement.

    >>> rows = run_lossy_bench(default_model_path(), ours_bits=(1, 2, 3))   # doctest: +SKIP
    >>> write_curve(rows, "results")   # results/lossy_rate_quality.json and .csv  # doctest: +SKIP
"""
from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

OURS_BITS = (1.0, 1.5, 2.0, 3.0, 4.0)
TURBO_BITS = (1, 1.5, 2, 2.5, 3, 4)
COLUMNS = ("method", "bits_per_value", "kl_mean", "kl_p99", "top1_agreement", "ppl_change",
           "greedy_agreement", "greedy_common_prefix", "seconds")
TABLE_HEADER = f"{'method':40s} {'bits':>7s} {'KL mean':>9s} {'KL p99':>8s} {'top-1':>7s} {'d ppl':>8s} {'greedy':>7s}"


def format_row(r: dict) -> str:
    return (f"{r['method']:40s} {r['bits_per_value']:7.3f} {r['kl_mean']:9.4f} {r['kl_p99']:8.3f} "
            f"{r['top1_agreement']:7.3f} {r['ppl_change']:+8.4f} {r['greedy_agreement']:7.3f}")


def run_lossy_bench(model_path: str, text_path: str | None = None, *, n_context: int = 1000, n_eval: int = 256,
                    n_greedy: int = 128, ours_bits: Iterable[float] = OURS_BITS,
                    turbo_bits: Iterable[float] = TURBO_BITS, versions: Iterable[int] = (),
                    ours_only: bool = False, show=log.info) -> list[dict]:
    """Score every method on one session; ``show`` gets the table line by line as rows come in (default: the
    log; the commands pass ``print``). ``versions``:
    older lossy formats (1, 2) to run beside the current one. Returns one dict per method and rate."""
    from ..calibrate.profile import load_or_build_profile
    from ..calibrate.quality import QualityBench
    from ..codecs.kv_lossy.codec import FORMAT_VERSION, KVLossyCodec, rope_params
    from ..config import SeqKV
    from .turboquant_peer import turboquant_state

    bench = QualityBench(model_path, text_path, n_context=n_context, n_eval=n_eval, n_greedy=n_greedy)
    n_values = sum(t.n_cells * t.n_channels for t in bench.state.tensors())
    rows: list[dict] = []

    def add(method, bits, produce):
        t0 = time.perf_counter()
        result = produce()
        rows.append({"method": method, "bits_per_value": round(bits() if callable(bits) else bits, 4), **result,
                     "seconds": round(time.perf_counter() - t0, 2)})
        show(format_row(rows[-1]))

    show(f"text: {bench.text_name}; {n_context} context tokens, {n_eval} teacher-forced, {n_greedy} greedy; "
         "flash attention on both sides")
    show(TABLE_HEADER)
    add("lossless f16", 16.0, lambda: bench.evaluate(bench.blob))
    profile = load_or_build_profile(bench.model_path)
    variants = [(f"kv_lossy v{FORMAT_VERSION}", FORMAT_VERSION, profile)]
    variants += [(f"kv_lossy v{v}", v, profile if v >= 2 else None) for v in sorted(set(versions), reverse=True)
                 if v != FORMAT_VERSION]
    default_kl = SeqKV(kv="lossy").max_kl  # the defaults: a quality target, the model's table picks the rate
    for name, version, prof in variants:
        settings = [(f"{bits:g}", KVLossyCodec(bits=bits, version=version)) for bits in ours_bits]
        if version == FORMAT_VERSION:
            settings.append((f"default (max_kl {default_kl:g})", KVLossyCodec(max_kl=default_kl)))
        for label, codec in settings:
            holder: dict = {}

            def ours(codec=codec, holder=holder, prof=prof):
                blob, coded = bench.lossy_blob(codec, profile=prof)
                holder["bits"] = 8 * coded / n_values
                return bench.evaluate(blob)

            add(f"seqkv {name} {label}", lambda holder=holder: holder["bits"], ours)
    if ours_only:
        return rows
    rope = rope_params(bench.ev.llm)
    head_dims = (rope["head_dim_k"], rope["head_dim_v"])
    for bits in turbo_bits:
        holder = {}

        def turbo(bits=bits, holder=holder):
            blob, holder["bits"] = turboquant_state(bench.state, bits, head_dims)
            return bench.evaluate(blob)

        add(f"TurboQuant peer {bits:g}", lambda holder=holder: holder["bits"], turbo)
    for cache_type, bits in (("q8_0", 8.5), ("q4_0", 4.5)):
        add(f"llama.cpp {cache_type}", bits, lambda ct=cache_type: bench.evaluate_cache_type(ct))
    return rows


def write_curve(rows: list[dict], directory) -> Path:
    """Write the rows as ``lossy_rate_quality.json`` and ``.csv`` (bits per value vs quality, per method)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lossy_rate_quality.json").write_text(json.dumps(rows, indent=2))
    with open(out / "lossy_rate_quality.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return out / "lossy_rate_quality.json"
