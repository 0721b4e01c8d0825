"""Segment coder format 2 coded by the wgpu shaders (seqkv_edge.codecs.segcode_wgpu) beside the CPU coder.

    python benchmarks/segcode_wgpu.py [DUMP] [--reps N] [--step-sigma S]

Data as in benchmarks/segcode_throughput.py (the default model's f16 dump, else synthetic Laplacian data of its
shape), each tensor quantized per channel at step = S * its standard deviation. Times, one call per tensor as a
save or a restore would: encode_f32 (the C core quantizes and fits the models, the shader codes the segments) and
decode_f32 on wgpu's adapter (copies to and from it included), and the CPU coder with one and two threads; checks
that both give the same stream and float32 bytes. MB/s counts the f16 KV bytes (2 per value). On Linux without a GPU
the adapter is Mesa's lavapipe, a software Vulkan on the CPU cores: its figure says what the shaders cost there, not
what a GPU does.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from segcode_throughput import best_time, load_tensors

from seqkv_edge.codecs import segcode, segcode_wgpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    home = Path(os.environ.get("SEQKV_HOME", Path.home() / ".cache" / "seqkv_edge"))
    parser.add_argument("dump", nargs="?", type=Path, default=home / "kvdumps" / "seq_fa_f16.bin")
    parser.add_argument("--reps", type=int, default=3, help="timing repetitions (best is kept)")
    parser.add_argument("--step-sigma", type=float, default=1.0, help="quantizer step, in standard deviations")
    args = parser.parse_args()
    source, tensors = load_tensors(args.dump)
    kv_mb = 2 * sum(t.size for t in tensors) / 1e6
    coder = segcode_wgpu.WgpuSegcode()
    info = coder.adapter.info
    print(f"data: {source}; {kv_mb:.1f} MB of f16 KV; cpu_count {os.cpu_count()}")
    print(f"adapter: {info['device']} ({info['adapter_type']}, {info['backend_type']})")
    steps = [(args.step_sigma * t.std(axis=0) + 1e-6).astype(np.float32) for t in tensors]
    inv_steps = [(1.0 / s).astype(np.float32) for s in steps]
    streams = [segcode.encode_f32(t, inv, format=2) for t, inv in zip(tensors, inv_steps)]
    for s, t, step, inv in zip(streams, tensors, steps, inv_steps):
        assert coder.encode(segcode.quantize(t, inv)) == s
        assert coder.decode_f32(s, *t.shape, step).tobytes() == segcode.decode_f32(s, *t.shape, step).tobytes()
    print(f"{'coder':>12} {'encode MB/s':>11} {'decode MB/s':>11}")
    encode_time = best_time(lambda: [coder.encode(segcode.quantize(t, inv)) for t, inv in zip(tensors, inv_steps)],
                            args.reps)
    decode_time = best_time(lambda: [coder.decode_f32(s, *t.shape, step)
                                     for s, t, step in zip(streams, tensors, steps)], args.reps)
    print(f"{'wgpu':>12} {kv_mb / encode_time:>11.1f} {kv_mb / decode_time:>11.1f}", flush=True)
    for threads in (1, 2):
        encode_time = best_time(lambda threads=threads: [segcode.encode_f32(t, inv, threads=threads, format=2)
                                                         for t, inv in zip(tensors, inv_steps)], args.reps)
        decode_time = best_time(lambda threads=threads: [segcode.decode_f32(s, *t.shape, step, threads=threads)
                                                         for s, t, step in zip(streams, tensors, steps)], args.reps)
        print(f"{f'cpu x{threads}':>12} {kv_mb / encode_time:>11.1f} {kv_mb / decode_time:>11.1f}", flush=True)


if __name__ == "__main__":
    main()
