"""Segment coder throughput (seqkv_edge.codecs.segcode): encode and decode MB/s of f16 KV, 1 and 2 threads.

    python benchmarks/segcode_throughput.py [DUMP] [--reps N] [--step-sigma S] [--formats 1,2]

Data: the f16 sequence state dump of the default model with flash attention
($SEQKV_HOME or ~/.cache/seqkv_edge, kvdumps/seq_fa_f16.bin: Qwen2.5-Coder-0.5B, 2,000 tokens of the GPL-3
text, made by benchmarks/codec_throughput.py) when it exists, else synthetic Laplacian data of the same
shape (24 layers x K, V of [2000, 128]). Each tensor is quantized per channel at step = S * its standard
deviation and coded with encode_f32 / decode_f32 (quantize + code, decode + dequantize), one call per tensor
as a restore would. MB/s counts the f16 KV bytes (2 per value). "ideal" is the order-0 entropy of each
channel's indices: what static per-channel models could reach without any side information. Format 1 has
one table per segment; format 2 one model per channel, stored once per tensor.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from seqkv_edge.codecs import segcode


def _parse_state():
    try:
        from seqkv_edge.state.blob import parse_seq_state
    except ImportError:
        from seqkv_edge.state import parse_seq_state
    return parse_seq_state


def load_tensors(path: Path | None):
    """(description, [float32 [n_cells, n_channels] matrices])."""
    if path is not None and path.exists():
        state = _parse_state()(path.read_bytes())
        tensors = [np.frombuffer(t.data, dtype=np.float16).reshape(-1, t.n_channels).astype(np.float32)
                   for t in state.tensors() if t.token_major and t.ggml_type.id == 1]
        if tensors:
            return f"{path} ({len(tensors)} f16 tensors)", tensors
    rng = np.random.default_rng(0)
    scales = np.exp(rng.uniform(-1.0, 2.0, size=128)).astype(np.float32)
    return "synthetic Laplacian, 48 tensors of [2000, 128]", [
        (rng.laplace(0.0, 1.0, size=(2000, 128)) * scales).astype(np.float32) for _ in range(48)]


def best_time(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def channel_entropy_bits(q: np.ndarray) -> float:
    total = 0.0
    for column in q.T:
        _, counts = np.unique(column, return_counts=True)
        p = counts / counts.sum()
        total -= float((counts * np.log2(p)).sum())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    home = Path(os.environ.get("SEQKV_HOME", Path.home() / ".cache" / "seqkv_edge"))
    parser.add_argument("dump", nargs="?", type=Path, default=home / "kvdumps" / "seq_fa_f16.bin")
    parser.add_argument("--reps", type=int, default=5, help="timing repetitions (best is kept)")
    parser.add_argument("--step-sigma", type=float, nargs="+", default=[0.25, 1.0],
                        help="quantizer steps, in standard deviations of each channel")
    parser.add_argument("--formats", default="1,2", help="segment coder formats, comma-separated")
    args = parser.parse_args()
    formats = [int(f) for f in args.formats.split(",") if f]
    source, tensors = load_tensors(args.dump)
    n_values = sum(t.size for t in tensors)
    kv_mb = 2 * n_values / 1e6
    print(f"data: {source}; {n_values:,} values = {kv_mb:.1f} MB of f16 KV; cpu_count {os.cpu_count()}")
    print(f"{'format':>6} {'step':>6} {'bits/value':>10} {'ideal':>6} {'threads':>7} {'encode MB/s':>11} "
          f"{'decode MB/s':>11}")
    for sigma in args.step_sigma:
        steps = [(sigma * t.std(axis=0) + 1e-6).astype(np.float32) for t in tensors]
        inv_steps = [(1.0 / s).astype(np.float32) for s in steps]
        ideal = sum(channel_entropy_bits(segcode.quantize(t, inv)) for t, inv in zip(tensors, inv_steps)) / n_values
        for fmt in formats:
            streams = [segcode.encode_f32(t, inv, threads=1, format=fmt) for t, inv in zip(tensors, inv_steps)]
            bits = 8 * sum(len(s) for s in streams) / n_values
            for threads in (1, 2):
                assert [segcode.encode_f32(t, inv, threads=threads, format=fmt)
                        for t, inv in zip(tensors, inv_steps)] == streams
                enc = best_time(lambda: [segcode.encode_f32(t, inv, threads=threads, format=fmt)
                                         for t, inv in zip(tensors, inv_steps)], args.reps)
                dec = best_time(lambda: [segcode.decode_f32(s, *t.shape, step, threads=threads)
                                         for s, t, step in zip(streams, tensors, steps)], args.reps)
                print(f"{fmt:>6} {sigma:>5.2f}s {bits:>10.3f} {ideal:>6.3f} {threads:>7} {kv_mb / enc:>11.0f} "
                      f"{kv_mb / dec:>11.0f}", flush=True)


if __name__ == "__main__":
    main()
