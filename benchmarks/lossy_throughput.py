"""kv_lossy on real KV dumps: single-thread encode and decode throughput, and the rate actually stored.

Usage:
    python benchmarks/lossy_throughput.py [DUMP ...] [--reps N] [--bits 1,2,3] [--max-kl 0.01] [--version 5,6]
                                          [--cores 1]

A DUMP is a llama.cpp per-sequence state blob (llama_state_seq_get_data) of the default model with f16 K and V.
Default: the two f16 dumps (flash attention on and off) that benchmarks/codec_throughput.py makes once from the
default model (Qwen2.5-Coder-0.5B Q4_K_M, 2,000 tokens of the GPL-3 text) in $SEQKV_HOME/kvdumps.
Throughput is MB of f16 KV tensor bytes per second on --cores cores (default one: the process is pinned to them,
BLAS to one thread; the codec's own threads share them), best of --reps runs, for the whole state: values read and
RoPE undone, bases applied, rate search (``bits``) or the calibrated scale (``max_kl``), quantization and entropy
coding; decoding back into the state's own f16 tensors. --version takes several formats (one table each, side by
side: format 6 is format 5's pipeline with the segment coder's format 2, whose segments run in parallel threads).
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codec_throughput import best_time, dump_paths  # noqa: E402

from seqkv_edge.calibrate.profile import load_or_build_profile  # noqa: E402
from seqkv_edge.codecs.kv_lossy.codec import FORMAT_VERSION, KVLossyCodec  # noqa: E402
from seqkv_edge.models import default_model_path  # noqa: E402
from seqkv_edge.state.blob import parse_seq_state, skeleton_layout  # noqa: E402

F16_DUMPS = ("seq_fa_f16.bin", "seq_nofa_f16.bin")


def model_setup(model_path: str):
    """(rope parameters, KV profile) of the model the dumps come from."""
    from seqkv_edge.hardware import load_plain_llama as Llama
    from seqkv_edge.state.rope import rope_params

    llm = Llama(model_path=model_path, n_ctx=64, n_threads=1, verbose=False)
    rope = rope_params(llm)
    del llm
    return rope, load_or_build_profile(model_path)


def bench_dump(path: Path, codecs, rope, profile, reps: int) -> None:
    blob = path.read_bytes()
    state = parse_seq_state(blob)
    tensors = state.tensors()
    if any(t.ggml_type.name != "f16" for t in tensors):
        raise SystemExit(f"{path}: not an f16 KV state")
    raw = sum(t.data.nbytes for t in tensors)
    positions = [st.positions for sec in state.sections for st in sec.streams]
    print(f"{path.name} ({len(tensors)} tensors, {raw / 1e6:.1f} MB of f16 KV, "
          f"v_trans={int(any(t.transposed for t in tensors))})")
    for label, codec in codecs:
        payloads = codec.encode_state(state, rope, profile=profile)
        bits = 8 * sum(map(len, payloads)) / (raw / 2)
        t_enc = best_time(lambda: codec.encode_state(state, rope, profile=profile), reps)
        out, skeleton = skeleton_layout(state.skeleton(), expected_size=len(blob))
        t_dec = best_time(lambda: codec.decode_state(payloads, skeleton, positions, rope, profile=profile), reps)
        print(f"  {label:14s} {bits:6.3f} bits/value   encode {raw / t_enc / 1e6:6.1f} MB/s   "
              f"decode {raw / t_dec / 1e6:6.1f} MB/s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dumps", nargs="*", help="f16 sequence state blobs of the default model (default: made "
                        "once in $SEQKV_HOME/kvdumps)")
    parser.add_argument("--reps", type=int, default=3, help="timing repetitions (best is kept)")
    parser.add_argument("--bits", default="1,2,3", help="comma-separated rate targets (bits per value)")
    parser.add_argument("--max-kl", type=float, default=0.01, help="a quality target (one pass, no rate search)")
    parser.add_argument("--version", default=str(FORMAT_VERSION),
                        help="lossy payload formats to write, comma-separated (e.g. 5,6)")
    parser.add_argument("--cores", type=int, default=1, help="cores the process may use (pinned; default 1)")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:max(1, args.cores)])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    paths = dump_paths(args.dumps, F16_DUMPS)
    rope, model_profile = model_setup(str(default_model_path()))
    for version in (int(v) for v in args.version.split(",")):
        profile = model_profile if version >= 2 else None
        codecs = [(f"bits={b}", KVLossyCodec(bits=float(b), version=version)) for b in args.bits.split(",")]
        codecs.append((f"max_kl={args.max_kl:g}", KVLossyCodec(max_kl=args.max_kl, version=version)))
        print(f"kv_lossy format {version}, model profile {'on' if profile else 'off'}, {cores} core(s), "
              f"load average {os.getloadavg()[0]:.2f}")
        for path in paths:
            bench_dump(path, codecs, rope, profile, args.reps)


if __name__ == "__main__":
    main()
