"""kv_lossless on real KV dumps: ratio, single-thread and parallel throughput, vs zstd level 3.

Usage:
    python benchmarks/codec_throughput.py [DUMP ...] [--reps N] [--layers N]

A DUMP is a llama.cpp per-sequence state blob (llama_state_seq_get_data) with one KV stream.
Default: four dumps made once from the default model (Qwen2.5-Coder-0.5B Q4_K_M, 2,000 tokens of the
GPL-3 text; f16 without and with flash attention, q8_0, q4_0) in $SEQKV_HOME/kvdumps.
Ratios count every byte of the coded streams (headers and side information included) against
the raw tensor bytes; throughput is MB of raw tensor bytes per second, best of --reps runs per
tensor, measured after a warm-up call (context tables cached in the thread's workspace). The runs
of one tensor are spread over the whole measurement (all tensors, then all again, ...), so that a
few seconds of interference from elsewhere on the machine cannot spoil every run of a tensor.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from seqkv_edge import native  # noqa: E402
from seqkv_edge.codecs.kv_lossless import KVLosslessCodec  # noqa: E402
from seqkv_edge.models import seqkv_home  # noqa: E402
from seqkv_edge.state.blob import parse_seq_state  # noqa: E402

DUMP_LAYOUTS = {  # file name: (ggml cache type, flash attention)
    "seq_nofa_f16.bin": (1, False), "seq_fa_f16.bin": (1, True), "seq_fa_q8_0.bin": (8, True), "seq_fa_q4_0.bin": (2, True),
}
TYPE_NAMES = {0: "f32", 1: "f16", 2: "q4_0", 8: "q8_0", 30: "bf16"}


def load_tensors(blob: bytes):
    """(tensors, v_trans) of a sequence state: tensors are (name K<l>/V<l>, data, type, token_major, n_channels)."""
    state = parse_seq_state(blob)
    tensors = [(f"{t.kind.upper()}{t.layer}", t.data, t.ggml_type.id, t.token_major, t.n_channels)
               for t in state.tensors()]
    return tensors, any(not t.token_major for t in state.tensors())


def make_dumps(directory: Path, n_tokens: int = 2000) -> None:
    """Write the default dumps: the default model's state after n_tokens of the GPL-3 text, per cache layout."""
    from seqkv_edge.hardware import load_plain_llama
    from seqkv_edge.models import default_model_path
    from seqkv_edge.sessions.prefill import prefill
    from seqkv_edge.state.blob import read_seq_state
    from seqkv_edge.textdata import read_text

    directory.mkdir(parents=True, exist_ok=True)
    text, _ = read_text()
    for name, (cache_type, flash_attn) in DUMP_LAYOUTS.items():
        if (directory / name).exists():
            continue
        llm = load_plain_llama(default_model_path(), n_ctx=4096, n_threads=os.cpu_count(), verbose=False,
                              type_k=cache_type, type_v=cache_type, flash_attn=flash_attn)
        prefill(llm, llm.tokenize(text.encode())[:n_tokens], desc=name)
        (directory / name).write_bytes(read_seq_state(llm.ctx))
        del llm


def best_time(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_dump(path: Path, reps: int, layers: int | None) -> None:
    tensors, v_trans = load_tensors(path.read_bytes())
    if layers:
        n_layer = len(tensors) // 2
        keep = set(range(0, n_layer, max(1, n_layer // layers)))
        tensors = [t for t in tensors if int(t[0][1:]) in keep]
    ws = native.KVWorkspace()
    raw = {"K": 0, "V": 0}
    coded = {"K": 0, "V": 0}
    blobs, outs = [], []
    for name, data, typ, token_major, n_channels in tensors:
        data = np.ascontiguousarray(data)
        blob = native.kv_encode(data, typ, token_major, n_channels, -1, ws)  # warm-up (tables)
        out = np.empty_like(data)
        native.kv_decode(blob, typ, token_major, n_channels, out, ws)
        if not np.array_equal(out, data):
            raise SystemExit(f"{path.name} {name}: round trip is not bit-exact")
        raw[name[0]] += data.nbytes
        coded[name[0]] += len(blob)
        blobs.append(blob)
        outs.append(out)
    best_enc = [float("inf")] * len(tensors)
    best_dec = [float("inf")] * len(tensors)
    for _ in range(reps):
        for i, (name, data, typ, token_major, n_channels) in enumerate(tensors):
            data = np.ascontiguousarray(data)
            best_enc[i] = min(best_enc[i], best_time(lambda: native.kv_encode(data, typ, token_major, n_channels,
                                                                               -1, ws), 1))
            best_dec[i] = min(best_dec[i], best_time(lambda: native.kv_decode(blobs[i], typ, token_major,
                                                                               n_channels, outs[i], ws), 1))
    t_enc, t_dec = sum(best_enc), sum(best_dec)
    total_raw, total_coded = sum(raw.values()), sum(coded.values())
    all_bytes = b"".join(np.ascontiguousarray(t[1]).tobytes() for t in tensors)
    zstd3 = len(zstandard.ZstdCompressor(level=3).compress(all_bytes))
    typ = TYPE_NAMES.get(tensors[0][2], str(tensors[0][2]))

    jobs = [(np.ascontiguousarray(d), t, tm, c) for _, d, t, tm, c in tensors]
    par = KVLosslessCodec()
    t_par_enc = best_time(lambda: par.encode_many(jobs), max(1, reps // 2))
    outs = [np.empty_like(j[0]) for j in jobs]
    t_par_dec = best_time(lambda: par.decode_many([(b, j[1], j[2], j[3], o) for b, j, o in zip(blobs, jobs, outs)]),
                          max(1, reps // 2))

    per_value = typ in ("f16", "bf16", "f32")
    bits = total_coded / total_raw * ({"f32": 32}.get(typ, 16) if per_value else 8)
    print(f"{path.name} ({typ}, v_trans={int(v_trans)}, {len(tensors)} tensors, {total_raw / 1e6:.1f} MB raw)")
    print(f"  kv_lossless ratio  K {raw['K'] / coded['K']:.4f}  V {raw['V'] / coded['V']:.4f}  "
          f"all {total_raw / total_coded:.4f}  ({bits:.2f} bits per {'value' if per_value else 'byte'})")
    print(f"  zstd -3 ratio      {total_raw / zstd3:.4f}")
    print(f"  1 thread           encode {total_raw / t_enc / 1e6:6.1f} MB/s   decode {total_raw / t_dec / 1e6:6.1f} MB/s")
    print(f"  {os.cpu_count()} threads (*_many) encode {total_raw / t_par_enc / 1e6:6.1f} MB/s   "
          f"decode {total_raw / t_par_dec / 1e6:6.1f} MB/s")


def dump_paths(given: list[str], names) -> list[Path]:
    """The dumps named on the command line, or the default ones (made once in $SEQKV_HOME/kvdumps)."""
    if given:
        return [Path(p) for p in given]
    make_dumps(seqkv_home() / "kvdumps")
    return [seqkv_home() / "kvdumps" / name for name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dumps", nargs="*", help="sequence state blobs (default: made once from the default model "
                        "in $SEQKV_HOME/kvdumps)")
    parser.add_argument("--reps", type=int, default=3, help="timing repetitions per tensor (best is kept)")
    parser.add_argument("--layers", type=int, default=None, help="use about this many layers (default: all)")
    args = parser.parse_args()
    native.require()
    for path in dump_paths(args.dumps, DUMP_LAYOUTS):
        bench_dump(path, args.reps, args.layers)


if __name__ == "__main__":
    main()
