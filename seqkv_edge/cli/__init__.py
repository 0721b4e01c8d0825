"""The ``seqkv`` command: ``demo``, ``inspect``, ``bench``, ``chat``, ``serve``, ``quality``, ``calibrate``,
``store``.

Command front ends (argument parsing and terminal output) live in this package; the work they
drive lives in the library modules beside it."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from ..errors import SeqKVError
from ..models import MODEL_HELP


def _model_path(args) -> str:
    """``--model NAME|PATH``: a known model's name (``seqkv_edge.models``), a GGUF path, or the default model."""
    from ..models import model_path

    try:
        return model_path(getattr(args, "model", None))
    except ValueError as error:
        raise SystemExit(f"seqkv: {error}") from None


def cmd_inspect(args) -> int:
    from ..container.session_file import read_container

    container = read_container(args.file)
    if container.header is not None:
        return _inspect_tokens_only(args, container)
    meta = container.meta
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    size = Path(args.file).stat().st_size
    print(f"{args.file}: seqkv session, format {container.version}, {size:,} bytes")
    model = meta.get("model", {})
    print(f"  model      {model.get('name') or '?'} ({model.get('arch')}), fingerprint {model.get('fingerprint')}")
    print(f"  saved by   seqkv_edge {meta.get('seqkv_edge')}, llama-cpp-python {meta.get('build', {}).get('llama_cpp_python')}, {meta.get('created')}")
    cache = meta.get("cache", {})
    print(f"  tokens     {meta.get('n_tokens'):,}")
    print(f"  KV cache   K {'/'.join(cache.get('k_types', []))}, V {'/'.join(cache.get('v_types', []))}, v_trans={cache.get('v_trans')}")
    state_bytes = meta.get("state_bytes", 0)
    print(f"  raw state  {state_bytes:,} bytes -> {size:,} bytes ({state_bytes / size:.4f}x)")
    codecs = meta.get("codecs", {})
    print(f"  codecs     kv={codecs.get('kv')} tokens={codecs.get('tokens')}")
    kinds = {}
    for kind, payload in container.sections:
        name = _kind_label(kind)
        count, total = kinds.get(name, (0, 0))
        kinds[name] = (count + 1, total + len(payload))
    for name, (count, total) in kinds.items():
        print(f"  section    {name:<9} x{count:<4} {total:,} bytes")
    tensors = meta.get("tensors", [])
    if tensors and args.tensors:
        for t in tensors:
            print(f"    {t['name']:<16} type {t['ggml_type']:<3} cells {t['n_cells']:<6} channels {t['n_channels']:<5} "
                  f"{'token-major' if t['token_major'] else 'channel-major'} {t['nbytes']:,} B")
    return 0


def _inspect_tokens_only(args, container) -> int:
    from ..sessions.tokens import decode_header

    header = decode_header(container.header, args.file)
    header["build"] = header["build"].hex()
    if args.json:
        print(json.dumps(header, indent=2))
        return 0
    size = Path(args.file).stat().st_size
    print(f"{args.file}: seqkv tokens-only session ({header['tier']} tier), format {container.version}, {size:,} bytes")
    print(f"  model      fingerprint {header['fingerprint']}, vocabulary {header['n_vocab']:,}")
    print(f"  build      {header['build']} (model-coded tokens replay only on the same llama.cpp build)")
    print(f"  tokens     {header['n_tokens']:,} ({8 * size / max(header['n_tokens'], 1):.2f} bits/token, header included)")
    for kind, payload in container.sections:
        print(f"  section    {_kind_label(kind):<12} {len(payload):,} bytes")
    return 0


def _kind_label(kind: int) -> str:
    from ..container.session_file import Kind

    return Kind(kind).name if kind in Kind._value2member_map_ else f"kind-{kind}"


def cmd_bench(args) -> int:
    from ..bench.snapshots import environment

    if args.report:
        from ..bench.report import report_main

        status = report_main(args)
        print(f"wrote {Path(args.report) / 'report.md'} (plots and report.json beside it)")
        return status
    if args.dedup:
        from ..bench.dedup import format_report, run_dedup_bench

        result = run_dedup_bench(args)
        print(format_report(result))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2, default=str))
        return 0
    model_path = _model_path(args)
    tiers = set(args.tiers.split(","))
    unknown = tiers - {"snapshot", "tokens", "lossy"}
    if unknown:
        raise SystemExit(f"seqkv bench: unknown tiers {sorted(unknown)}; choose from snapshot,tokens,lossy")
    report, ok = {"model": model_path, "env": environment(args.threads)}, True
    print(f"model: {model_path}\nenv: {report['env']}")
    if "snapshot" in tiers:
        report["snapshot"], ok = _bench_snapshot(args, model_path)
    if "tokens" in tiers:
        from ..bench import tokens as bench_tokens

        result = bench_tokens.run(model_path, args.tokens, args.answer_tokens, args.n_ctx)
        print(f"\ntoken tiers (texts: {', '.join(f'{k} ({v})' for k, v in bench_tokens.TEXTS.items())}; "
              "a 3-question chat answered by the model):")
        print(bench_tokens.format_table(result["rows"]))
        gen = result["generation"]
        print(f"capturing hybrid codes while generating {gen['generated_tokens']} tokens: {gen['capturing_s']:.2f}s "
              f"vs {gen['plain_s']:.2f}s ({100 * gen['overhead']:+.1f}%)")
        report["tokens"] = result
    if "lossy" in tiers:
        report["lossy"] = _bench_lossy(args, model_path)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if ok else 1


def _bench_lossy(args, model_path: str) -> list[dict]:
    from ..bench.lossy import run_lossy_bench, write_curve

    print("\nlossy KV snapshots: rate vs quality against the exact f16 cache (mean KL in nats per token)")
    rows = run_lossy_bench(model_path, args.text, n_context=args.lossy_context, n_eval=args.lossy_eval,
                           n_greedy=args.lossy_greedy, ours_bits=[float(b) for b in args.lossy_bits.split(",")],
                           show=print)
    print(f"curve (bits per value vs quality, every method): {write_curve(rows, args.curve_dir)} and .csv")
    return rows


def _bench_snapshot(args, model_path: str):
    from ..bench.snapshots import bench_cache_type, format_table
    from ..llama import Llama
    from ..textdata import read_text

    text, text_name = read_text(args.text)
    vocab = Llama(model_path=model_path, vocab_only=True, verbose=False)
    tokens = vocab.tokenize(text.encode())[: args.tokens]
    del vocab
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cache_type in args.cache_types.split(","):
            rows.append(bench_cache_type(model_path, tokens, cache_type, Path(tmp), args.n_ctx, args.threads))
    print(f"\nKV snapshot, lossless (text: {text_name}, first {len(tokens)} tokens; raw C: llama_state_seq_get_data/"
          "set_data with the file written, fsynced and read back, as llama-server does; py save_state/load_state: "
          "llama-cpp-python's own, a second baseline):")
    print(format_table(rows))
    for r in rows:
        print(f"{r['cache_type']}: codec encode {r['encode_mb_s']:.0f} MB/s, decode {r['decode_mb_s']:.0f} MB/s "
              f"({args.threads or 'all'} threads); load_session steps {r['load_steps_s']}")
    return {"text": text_name, "rows": rows}, all(r["bit_exact"] for r in rows)


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(_model_path(args), args.tokens, args.n_ctx, args.out)


def build_parser() -> argparse.ArgumentParser:
    from ..bench.dedup import add_dedup_arguments
    from .store import add_store_parser

    parser = argparse.ArgumentParser(prog="seqkv", description="Sequence-level KV cache compression for llama.cpp")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="save, restore and continue a ~1,500-token session on the default model")
    demo.add_argument("--model", help=MODEL_HELP)
    demo.add_argument("--tokens", type=int, default=1500)
    demo.add_argument("--n-ctx", type=int, default=4096)
    demo.add_argument("--out", help="where to keep the session file (default: a temporary directory)")
    demo.set_defaults(func=cmd_demo)

    inspect = sub.add_parser("inspect", help="print what a session file holds")
    inspect.add_argument("file")
    inspect.add_argument("--json", action="store_true", help="print the raw header as JSON")
    inspect.add_argument("--tensors", action="store_true", help="list every KV tensor")
    inspect.set_defaults(func=cmd_inspect)

    bench = sub.add_parser("bench", help="sizes and times against llama.cpp's raw state, zstd and re-prefill")
    bench.add_argument("--model", help=MODEL_HELP)
    bench.add_argument("--text", help="English plain text (default: /usr/share/common-licenses/GPL-3)")
    bench.add_argument("--tokens", type=int, default=2000)
    bench.add_argument("--n-ctx", type=int, default=4096)
    bench.add_argument("--threads", type=int, default=None)
    bench.add_argument("--cache-types", default="f16,q8_0,q4_0")
    bench.add_argument("--tiers", default="snapshot", help="comma list of: snapshot, tokens, lossy")
    bench.add_argument("--answer-tokens", type=int, default=120, help="tokens per generated chat answer")
    bench.add_argument("--json", help="also write the figures to this JSON file")
    bench.add_argument("--dedup", action="store_true", help="prefix store vs files/LlamaDiskCache, lookup latency, TTFT")
    lossy = bench.add_argument_group("lossy tier (--tiers lossy)")
    lossy.add_argument("--lossy-bits", default="1,1.5,2,3,4", help="rates of seqkv's lossy rows (bits per value)")
    lossy.add_argument("--lossy-context", type=int, default=1000, help="context tokens of the session")
    lossy.add_argument("--lossy-eval", type=int, default=256, help="teacher-forced tokens scored after it")
    lossy.add_argument("--lossy-greedy", type=int, default=128, help="greedy tokens compared after it")
    lossy.add_argument("--curve-dir", default=".", help="where lossy_rate_quality.json/.csv go (default: here)")
    add_dedup_arguments(bench)
    bench.set_defaults(func=cmd_bench)
    from ..bench import report
    from . import calibrate, chat, serve

    report.add_report_args(bench)
    calibrate.add_parser(sub)
    chat.add_parser(sub)
    serve.add_parser(sub)
    quality = sub.add_parser("quality", add_help=False, help="KL / top-1 / perplexity of a lossy session vs exact")
    quality.set_defaults(func=None)  # main() forwards to cli.quality
    add_store_parser(sub)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["quality"]:  # its own parser: forward every option untouched
        from .quality import main as quality_main

        return quality_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (SeqKVError, FileNotFoundError, ValueError) as exc:
        print(f"seqkv {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
