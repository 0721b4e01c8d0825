"""``seqkv bench --report DIR``: every storage tier measured on one text, written as ``report.md`` + plots.

For each context length (default 250, 500, 1000 tokens of the benchmark text) it prefills a
context and runs :func:`seqkv_edge.bench.tokens.measure_session` (the token tiers, the lossless
snapshot, the lossy one at 2 bits per value with the model's KV profile, the model's ideal code length, and
each tier's restore time; the lossy tier's quality is ``seqkv bench --tiers lossy``); it adds zstd-3 of the raw
f16 state and llama.cpp's q8_0/q4_0 cache types (:func:`seqkv_edge.bench.snapshots.bench_cache_type`).

Files: ``report.md`` (tables, machine, model, text, versions), ``report.json`` (every figure),
``bytes_per_token.png``, ``restore_seconds.png``, ``bits_per_token.png``.

    $ seqkv bench --report out/          # ~6 minutes on 2 cores with the default model
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import zstandard
from tqdm import tqdm

from .. import __version__
from ..models import MODEL_HELP

log = logging.getLogger(__name__)

DEFAULT_LENGTHS = (250, 500, 1000)


def add_report_args(parser: argparse.ArgumentParser) -> None:
    """``--report DIR`` and ``--report-lengths`` for ``seqkv bench`` (``--model/--text/--n-ctx/--threads`` are bench's)."""
    parser.add_argument("--report", metavar="DIR", help="measure every tier and write DIR/report.md with plots")
    parser.add_argument("--report-lengths", default=",".join(map(str, DEFAULT_LENGTHS)),
                        help="context lengths (tokens) of the report (default: %(default)s)")
    parser.add_argument("--report-cache-types", default="q8_0,q4_0",
                        help="llama.cpp KV cache types compared in the report (default: %(default)s)")


def report_main(args) -> int:
    """Run the report (``args``: report, report_lengths, report_cache_types, model, text, n_ctx, threads)."""
    from ..models import model_path as find_model

    model_path = find_model(getattr(args, "model", None))
    lengths = sorted({int(n) for n in str(args.report_lengths).split(",") if n.strip()})
    cache_types = [t for t in str(getattr(args, "report_cache_types", "q8_0,q4_0")).split(",") if t]
    result = run_report(model_path, Path(args.report), lengths, text=getattr(args, "text", None),
                        n_ctx=getattr(args, "n_ctx", 4096) or 4096, n_threads=getattr(args, "threads", None),
                        cache_types=cache_types)
    log.info("wrote %s in %.0fs", Path(args.report) / "report.md", result["seconds"])
    return 0


def run_report(model_path: str, out_dir: Path, lengths, *, text=None, n_ctx: int = 4096, n_threads=None,
               cache_types=("q8_0", "q4_0")) -> dict:
    """Measure, then write ``report.md``, ``report.json`` and the plots into ``out_dir``; returns the figures."""
    from ..codecs import kv_lossless  # noqa: F401  (registers the snapshot codec for restores)
    from ..llama import Llama
    from ..state.blob import read_seq_state
    from ..textdata import read_text
    from . import tokens as bench_tokens
    from .snapshots import bench_cache_type, environment

    start, host = time.perf_counter(), machine()
    out_dir.mkdir(parents=True, exist_ok=True)
    text_body, text_name = read_text(text)
    n_ctx = max(n_ctx, max(lengths) + 64)
    vocab = Llama(model_path=model_path, vocab_only=True, verbose=False)
    all_tokens = vocab.tokenize(text_body.encode())
    model_name = vocab.metadata.get("general.name", "") or Path(model_path).stem
    del vocab
    if len(all_tokens) < max(lengths):
        raise ValueError(f"{text_name} has {len(all_tokens)} tokens; the report asks for {max(lengths)}")
    rows, cache_rows = [], []
    steps = tqdm(total=len(lengths) + len(cache_types), desc="seqkv report", unit="step", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp, steps:
        for length in lengths:
            steps.set_postfix_str(f"{length} tokens")
            llm = bench_tokens._llama(model_path, n_ctx)
            prefill_s = bench_tokens.text_session(llm, text_name, length)
            state = bytes(read_seq_state(llm.ctx))
            row = bench_tokens.measure_session(f"ctx{length}", llm, model_path, n_ctx, Path(tmp))
            row.update(prefill_s=prefill_s, zstd3_state_bytes=len(zstandard.ZstdCompressor(level=3).compress(state)))
            rows.append(row)
            del llm
            steps.update()
        for cache_type in cache_types:
            steps.set_postfix_str(cache_type)
            cache_rows.append(bench_cache_type(model_path, all_tokens[:max(lengths)], cache_type, Path(tmp), n_ctx,
                                               n_threads, progress=False))
            steps.update()
    result = {"model": {"path": model_path, "name": model_name, "bytes": os.path.getsize(model_path)},
              "text": {"path": text_name, "tokens": len(all_tokens)}, "machine": host,
              "versions": versions(environment()), "lengths": lengths, "rows": rows, "cache_types": cache_rows,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    result["seconds"] = time.perf_counter() - start
    (out_dir / "report.json").write_text(json.dumps(result, indent=2, default=str))
    plots = write_plots(result, out_dir)
    (out_dir / "report.md").write_text(format_markdown(result, plots))
    return result


def machine() -> dict:
    memory = 0
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(memory / 2**30, 1),
            "system": f"{platform.system()} {platform.release()}", "load_average_at_start": round(load, 2)}


def versions(env: dict) -> dict:
    import numpy

    return {"seqkv_edge": __version__, "llama_cpp_python": env.get("llama_cpp_python"), "python": env.get("python"),
            "numpy": numpy.__version__, "zstandard": zstandard.__version__}


# ---- tables --------------------------------------------------------------------------------

def size_rows(result: dict) -> list[tuple[str, float, str]]:
    """(representation, bytes per token, note) at the longest context."""
    row = result["rows"][-1]
    n = row["tokens"]
    out = [("llama.cpp raw state, f16", row["raw_state_bytes"] / n, "baseline"),
           ("zstd-3 of the f16 state", row["zstd3_state_bytes"] / n, "generic compressor")]
    for c in result["cache_types"]:
        out.append((f"llama.cpp raw state, {c['cache_type']}", c["seq_state_bytes"] / c["tokens"], "lossy cache type"))
    out.append(("seqkv KV snapshot, lossless (f16)", row["snapshot_bytes"] / n, "bit-exact, no recompute"))
    for c in result["cache_types"]:
        out.append((f"seqkv KV snapshot, lossless ({c['cache_type']})", c["file_bytes"] / c["tokens"],
                    f"bit-exact over {c['cache_type']}"))
    if "lossy_bytes" in row:
        from .tokens import LOSSY_BITS

        out.append((f"seqkv KV snapshot, lossy ({LOSSY_BITS:g} bits/value, model profile)", row["lossy_bytes"] / n,
                    "no recompute; quality: seqkv bench --tiers lossy"))
    out += [("seqkv tokens, portable", row["portable_bytes"] / n, "restore by prefill"),
            ("seqkv tokens, hybrid", row["hybrid_bytes"] / n, "restore by exact replay"),
            ("seqkv tokens, model-coded", row["model_bytes"] / n, "restore by one-token replay"),
            ("model cross-entropy (ideal)", row["ideal_bytes"] / n, "Shannon limit under the model")]
    return out


def _table(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])


def format_markdown(result: dict, plots: dict) -> str:
    m, v, rows = result["machine"], result["versions"], result["rows"]
    raw = rows[-1]["raw_state_bytes"] / rows[-1]["tokens"]
    sizes = _table(["representation", "bytes/token", "bits/token", "vs raw f16", "note"],
                   [[name, f"{b:,.2f}", f"{8 * b:,.2f}", "-" if note == "baseline" else f"{raw / b:,.1f}x smaller", note]
                    for name, b, note in size_rows(result)])
    restore = _table(["context tokens", "snapshot s", "lossy snapshot s", "hybrid replay s", "portable (prefill) s",
                      "model (one-token replay) s", "re-prefill s"],
                     [[str(r["tokens"]), f"{r['restore_s']['snapshot']:.3f}",
                       f"{r['restore_s']['lossy']:.3f}" if "lossy" in r["restore_s"] else "-",
                       f"{r['restore_s']['hybrid']:.2f}", f"{r['restore_s']['portable']:.2f}",
                       f"{r['restore_s']['model']:.2f}", f"{r['prefill_s']:.2f}"]
                      for r in rows])
    bits = _table(["context tokens", "cross-entropy bits/token", "model-coded", "hybrid", "portable",
                   "zstd-19 of ids", "model-coded / ideal"],
                  [[str(r["tokens"]), f"{r['ideal_bits'] / r['tokens']:.2f}"]
                   + [f"{8 * r[k] / r['tokens']:.2f}" for k in ("model_bytes", "hybrid_bytes", "portable_bytes",
                                                                "zstd19_ids_bytes")]
                   + [f"{r['model_bytes'] / r['ideal_bytes']:.3f}"] for r in rows])
    figures = "\n".join(f"![{title}]({name})" for title, name in plots.items())
    return f"""# seqkv_edge report

- **model**: {result['model']['name']} (`{result['model']['path']}`, {result['model']['bytes']:,} bytes)
- **text**: `{result['text']['path']}` (first {max(result['lengths'])} of {result['text']['tokens']:,} tokens)
- **machine**: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['system']} (1-minute load average at start: {m['load_average_at_start']}; timings on a busy machine are noisy)
- **versions**: seqkv_edge {v['seqkv_edge']}, llama-cpp-python {v['llama_cpp_python']}, Python {v['python']}, numpy {v['numpy']}, zstandard {v['zstandard']}
- **run**: {result['created']}, {result['seconds']:.0f} s

## Bytes per token ({rows[-1]['tokens']} tokens of context)

{sizes}

## Restore seconds by context length

Snapshot: decode the lossless KV and set it; lossy snapshot: decode the lossy KV (its KV profile cached) and set
it. Hybrid: replay the recorded eval schedule (bit-exact).
Portable: decode the tokens and prefill. Model-coded: decode token by token with one-token steps.
Re-prefill: recompute the context from the tokens (what a plain llama.cpp app does).

{restore}

## Bits per token against the model's cross-entropy

{bits}

{figures}
"""


# ---- plots ---------------------------------------------------------------------------------

def write_plots(result: dict, out_dir: Path) -> dict:
    """Write the PNGs; returns {title: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}
    names, values = zip(*[(name, b) for name, b, _ in size_rows(result)])
    fig, ax = plt.subplots(figsize=(9, 5))
    ax.barh(names, values, color=["#888"] * 2 + ["#c96"] * len(result["cache_types"]) + ["#36c"] * (len(names) - 2 - len(result["cache_types"])))
    ax.set_xscale("log")
    ax.set_xlabel("bytes per token (log scale)")
    ax.invert_yaxis()
    ax.set_title(f"Stored bytes per token, {result['rows'][-1]['tokens']}-token context")
    fig.tight_layout()
    plots["bytes per token"] = _save(fig, out_dir / "bytes_per_token.png")

    rows = result["rows"]
    lengths = [r["tokens"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    tiers = [("KV snapshot", "snapshot"), ("KV snapshot, lossy", "lossy"), ("hybrid replay", "hybrid"),
             ("portable (prefill)", "portable"), ("model-coded (one-token replay)", "model")]
    for label, tier in tiers:
        if all(tier in r["restore_s"] for r in rows):  # reports written before the lossy tier lack it
            ax.plot(lengths, [r["restore_s"][tier] for r in rows], marker="o", label=label)
    ax.plot(lengths, [r["prefill_s"] for r in rows], marker="o", label="re-prefill")
    ax.set_xlabel("context tokens")
    ax.set_ylabel("restore seconds")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Restore time against context length")
    fig.tight_layout()
    plots["restore seconds"] = _save(fig, out_dir / "restore_seconds.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, key in [("model-coded", "model_bytes"), ("hybrid", "hybrid_bytes"), ("portable", "portable_bytes"),
                       ("zstd-19 of int32 ids", "zstd19_ids_bytes")]:
        ax.plot(lengths, [8 * r[key] / r["tokens"] for r in rows], marker="o", label=label)
    ax.plot(lengths, [r["ideal_bits"] / r["tokens"] for r in rows], "k--", label="model cross-entropy")
    ax.set_xlabel("context tokens")
    ax.set_ylabel("bits per token")
    ax.legend()
    ax.set_title("Token tiers against the model's cross-entropy")
    fig.tight_layout()
    plots["bits per token"] = _save(fig, out_dir / "bits_per_token.png")
    return plots


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seqkv_edge.bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("report", metavar="DIR")
    parser.add_argument("--report-lengths", default=",".join(map(str, DEFAULT_LENGTHS)))
    parser.add_argument("--report-cache-types", default="q8_0,q4_0")
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--text")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None)
    return report_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
