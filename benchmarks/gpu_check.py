"""Device check of the segment coder's CUDA kernels (run by benchmarks/gpu_check.sh on an NVIDIA machine).

Needs only Python 3 + numpy, gcc and nvcc: no network, no build of the package. It compiles the CPU coder
(native/segcode.c + segcode2.c, gcc) and the kernels (native/segcode_cuda.cu, nvcc --fmad=false) into two shared
libraries and calls both through ctypes, then checks, writing JSON after every phase:
  machine_code  the kernels' SASS/PTX (when cuobjdump and nvdisasm are there): no FMA, no approximation;
  golden        GPU encode of every tests/fixtures/segcode_v{1,2}_* input == the frozen bytes, GPU decode == input;
  fuzz          random shapes and scales, formats 1 and 2: GPU bytes == CPU bytes (int32 and float32 input), each
                side decodes the other's stream, damaged streams give the CPU's error code, never a crash;
  throughput    large tensors, each format (--formats): GPU encode / decode wall time including host<->device
                copies, and the split into copies in / kernels / copies out; the CPU coder on all cores beside it;
  host_buffer   the largest tensor encoded from pageable and from page-locked memory (segc_cuda_host_alloc):
                the same bytes, and the copy-in time of each.
With --emulate the kernels are built for the host (g++ -DSEGC_EMULATE): the whole script runs without a GPU.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ROOT / "native"
FIXTURES = ROOT / "tests" / "fixtures"


def _load_segcode_cuda():
    """seqkv_edge/codecs/segcode_cuda.py by path: the package itself (and its dependencies) need not be installed."""
    spec = importlib.util.spec_from_file_location("segcode_cuda", ROOT / "seqkv_edge" / "codecs" / "segcode_cuda.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CpuSegcode:
    """native/segcode.c and segcode2.c built with gcc, called through ctypes (the same functions cffi wraps)."""

    def __init__(self, build_dir: Path):
        lib_path = build_dir / "libsegcode_cpu.so"
        subprocess.run(["gcc", "-O3", "-std=c11", "-fno-strict-aliasing", "-ffp-contract=off", "-fPIC", "-shared",
                        "-I", str(NATIVE), str(NATIVE / "segcode.c"), str(NATIVE / "segcode2.c"), "-o", str(lib_path),
                        "-lpthread"],
                       check=True, capture_output=True, text=True)
        self.lib = lib = ctypes.CDLL(str(lib_path))
        p, u32, i64, c_int = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int64, ctypes.c_int
        for name, args in {"segc_encode_bound": [u32, u32], "segc_encode": [p, u32, u32, p, i64, c_int],
                           "segc_encode_f32": [p, p, u32, u32, p, i64, c_int],
                           "segc_decode": [p, i64, u32, u32, p, c_int],
                           "segc2_encode_bound": [u32, u32], "segc2_encode": [p, u32, u32, p, i64, c_int],
                           "segc2_encode_f32": [p, p, u32, u32, p, i64, c_int, p, p],
                           "segc2_decode": [p, i64, u32, u32, p, c_int]}.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, i64
        self.threads = os.cpu_count() or 1

    def _fn(self, name, format):
        return getattr(self.lib, f"segc{'' if format == 1 else '2'}_{name}")

    def encode(self, q, format=1):
        q = np.ascontiguousarray(q, dtype=np.int32)
        cap = self._fn("encode_bound", format)(*q.shape)
        out = np.empty(cap, dtype=np.uint8)
        n = self._fn("encode", format)(q.ctypes.data, q.shape[0], q.shape[1], out.ctypes.data, cap, self.threads)
        if n < 0:
            raise RuntimeError(f"cpu encode: code {n}")
        return out[:n].tobytes()

    def encode_f32(self, x, inv_step, format=1):
        x = np.ascontiguousarray(x, dtype=np.float32)
        inv_step = np.ascontiguousarray(inv_step, dtype=np.float32)
        cap = self._fn("encode_bound", format)(*x.shape)
        out = np.empty(cap, dtype=np.uint8)
        n = self._fn("encode_f32", format)(x.ctypes.data, inv_step.ctypes.data, x.shape[0], x.shape[1],
                                           out.ctypes.data, cap, self.threads, *((None, None) if format == 2 else ()))
        if n < 0:
            raise RuntimeError(f"cpu encode_f32: code {n}")
        return out[:n].tobytes()

    def decode_rc(self, buf, n_cells, n_channels):
        """(return code, int32 output)"""
        src = np.frombuffer(buf, dtype=np.uint8)
        q = np.empty((n_cells, n_channels), dtype=np.int32)
        fn = self.lib.segc2_decode if len(buf) > 4 and buf[4] == 2 else self.lib.segc_decode
        rc = fn(src.ctypes.data, src.size, n_cells, n_channels, q.ctypes.data, self.threads)
        return int(rc), q


def gpu_decode_rc(gpu, buf, n_cells, n_channels):
    src = np.frombuffer(buf, dtype=np.uint8)
    q = np.empty((n_cells, n_channels), dtype=np.int32)
    ms = (ctypes.c_double * 3)()
    fn = gpu.lib.segc2_cuda_decode if len(buf) > 4 and buf[4] == 2 else gpu.lib.segc_cuda_decode
    rc = fn(src.ctypes.data, src.size, n_cells, n_channels, q.ctypes.data, ms)
    return int(rc), q


def check_golden(gpu, cpu):
    results = {}
    for fmt in (1, 2):
        manifest = json.loads((FIXTURES / f"segcode_v{fmt}_manifest.json").read_text())
        for name, case in sorted(manifest["cases"].items()):
            stream = (FIXTURES / f"segcode_v{fmt}_{name}.bin").read_bytes()
            data = np.load(FIXTURES / f"segcode_v{fmt}_{name}.npy")
            if case["kind"] == "int32":
                data = data.astype(np.int32)
                gpu_bytes, cpu_bytes, expected = gpu.encode(data, fmt), cpu.encode(data, fmt), data
            else:
                inv_step = np.load(FIXTURES / f"segcode_v{fmt}_{name}_inv_step.npy")
                gpu_bytes, cpu_bytes = gpu.encode_f32(data, inv_step, fmt), cpu.encode_f32(data, inv_step, fmt)
                expected = cpu.decode_rc(stream, *data.shape)[1]
            results[f"v{fmt}_{name}"] = {
                "gpu_encode_sha256_ok": hashlib.sha256(gpu_bytes).hexdigest() == case["sha256"],
                "cpu_encode_sha256_ok": hashlib.sha256(cpu_bytes).hexdigest() == case["sha256"],
                "gpu_decode_ok": bool(np.array_equal(gpu.decode(stream, *data.shape), expected)),
            }
    return {"cases": results, "ok": all(all(r.values()) for r in results.values())}


def check_fuzz(gpu, cpu, n_cases, seed):
    rng = np.random.default_rng(seed)
    failures, n_damaged, n_damaged_rc_equal = [], 0, 0
    for case in range(n_cases):
        fmt = 1 + case % 2
        shape = (int(rng.integers(1, 3000 if fmt == 1 else 6000)), int(rng.integers(1, 400)))
        scale = float(rng.choice([0.0, 0.1, 0.5, 1.0, 3.0, 30.0, 1000.0, 1e5]))
        q = np.clip(np.round(rng.laplace(0.0, scale, size=shape)), -32767, 32767).astype(np.int32)
        g, c = gpu.encode(q, fmt), cpu.encode(q, fmt)
        ok = g == c and np.array_equal(gpu.decode(c, *shape), q) and np.array_equal(cpu.decode_rc(g, *shape)[1], q)
        x = (rng.standard_normal(shape) * rng.uniform(0.01, 10.0, size=shape[1])).astype(np.float32)
        inv_step = rng.uniform(0.1, 20.0, size=shape[1]).astype(np.float32)
        ok = ok and gpu.encode_f32(x, inv_step, fmt) == cpu.encode_f32(x, inv_step, fmt)
        if not ok:
            failures.append({"case": case, "format": fmt, "shape": shape, "scale": scale})
        damaged = bytearray(c)
        for pos in rng.integers(0, len(damaged), size=int(rng.integers(1, 5))):
            damaged[pos] ^= 1 << int(rng.integers(0, 8))
        if rng.random() < 0.3:
            damaged = damaged[: int(rng.integers(0, len(damaged)))]
        rc_gpu, rc_cpu = gpu_decode_rc(gpu, bytes(damaged), *shape)[0], cpu.decode_rc(bytes(damaged), *shape)[0]
        n_damaged += 1
        n_damaged_rc_equal += int(rc_gpu == rc_cpu or (rc_gpu >= 0 and rc_cpu >= 0))
    return {"cases": n_cases, "failures": failures[:20], "damaged_streams": n_damaged,
            "damaged_same_outcome": n_damaged_rc_equal,
            "ok": not failures and n_damaged_rc_equal == n_damaged}


def check_host_buffer(gpu, n_cells, n_channels, reps):
    """Format 2 encode of one float32 tensor from pageable memory and from the kernels' page-locked host buffer
    (``host_buffer``, what a save reads llama.cpp's state into when CUDA codes it): the same bytes, and the time of
    each (the copy to the device is part of it)."""
    rng = np.random.default_rng(11)
    pageable = (rng.laplace(0.0, 1.0, size=(n_cells, n_channels)) * 2.0).astype(np.float32)
    pinned = gpu.host_buffer(pageable.nbytes).view(np.float32).reshape(pageable.shape)
    pinned[...] = pageable
    inv_step = np.ones(n_channels, np.float32)
    row = {"n_cells": n_cells, "n_channels": n_channels, "bytes": pageable.nbytes}
    streams = {}
    for name, x in (("pageable", pageable), ("pinned", pinned)):
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            streams[name] = gpu.encode_f32(x, inv_step, format=2)
            times.append(time.perf_counter() - start)
        row[f"{name}_encode_s"], row[f"{name}_copy_in_ms"] = min(times), gpu.last_ms[0]
    row["ok"] = streams["pageable"] == streams["pinned"]
    return row


def check_throughput(gpu, cpu, sizes, reps, formats=(1, 2)):
    rows = []
    rng = np.random.default_rng(7)
    for (n_cells, n_channels), fmt in [(size, fmt) for size in sizes for fmt in formats]:
        x = (rng.laplace(0.0, 1.0, size=(n_cells, n_channels)) * 2.0).astype(np.float32)
        q = np.clip(np.round(x), -32767, 32767).astype(np.int32)
        del x
        kv_gb = 2 * q.size / 1e9  # as f16 KV
        cells_per_segment = 256 if fmt == 1 else 2048
        row = {"format": fmt, "n_cells": n_cells, "n_channels": n_channels, "kv_f16_gb": kv_gb,
               "segments": ((n_cells + cells_per_segment - 1) // cells_per_segment) * ((n_channels + 63) // 64)}
        start = time.perf_counter()
        cpu_stream = cpu.encode(q, fmt)
        row["cpu_encode_s"] = time.perf_counter() - start
        row["bits_per_value"] = 8 * len(cpu_stream) / q.size
        start = time.perf_counter()
        cpu.decode_rc(cpu_stream, n_cells, n_channels)
        row["cpu_decode_s"] = time.perf_counter() - start
        row["cpu_threads"] = cpu.threads
        gpu.encode(q[: min(n_cells, 256)], fmt)  # warm-up: context creation, module load
        enc_wall, enc_ms, dec_wall, dec_ms = [], [], [], []
        for _ in range(reps):
            start = time.perf_counter()
            stream = gpu.encode(q, fmt)
            enc_wall.append(time.perf_counter() - start)
            enc_ms.append(gpu.last_ms)
            start = time.perf_counter()
            out = gpu.decode(stream, n_cells, n_channels)
            dec_wall.append(time.perf_counter() - start)
            dec_ms.append(gpu.last_ms)
        row["gpu_bytes_equal_cpu"] = stream == cpu_stream
        row["gpu_decode_exact"] = bool(np.array_equal(out, q))
        best_e, best_d = int(np.argmin(enc_wall)), int(np.argmin(dec_wall))
        row["gpu_encode"] = {"wall_s": enc_wall[best_e], "h2d_kernels_d2h_ms": list(enc_ms[best_e]),
                             "gb_per_s_with_copies": kv_gb / enc_wall[best_e],
                             "gb_per_s_kernels": kv_gb / max(enc_ms[best_e][1] / 1e3, 1e-9)}
        row["gpu_decode"] = {"wall_s": dec_wall[best_d], "h2d_kernels_d2h_ms": list(dec_ms[best_d]),
                             "gb_per_s_with_copies": kv_gb / dec_wall[best_d],
                             "gb_per_s_kernels": kv_gb / max(dec_ms[best_d][1] / 1e3, 1e-9)}
        row["cpu_gb_per_s"] = {"encode": kv_gb / row["cpu_encode_s"], "decode": kv_gb / row["cpu_decode_s"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu_check.json")
    parser.add_argument("--emulate", action="store_true", help="build the kernels for the host (no GPU)")
    parser.add_argument("--fuzz", type=int, default=60, help="random cases")
    parser.add_argument("--sizes", default="4096x1024,65536x1024,65536x4096",
                        help="throughput shapes, CELLSxCHANNELS,... (65536x4096 = 268M values, 512 MB of f16 KV)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--formats", default="1,2", help="segment coder formats to time")
    args = parser.parse_args()
    report = {"host": platform.node(), "python": sys.version.split()[0], "numpy": np.__version__,
              "emulate": args.emulate, "phases": {}}

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")

    def phase(name, fn):
        start = time.perf_counter()
        try:
            report["phases"][name] = fn()
        except Exception as exc:  # one phase failing must not hide the others' results
            report["phases"][name] = {"ok": False, "error": repr(exc), "traceback": traceback.format_exc()}
        report["phases"][name + "_seconds"] = time.perf_counter() - start
        print(f"{name}: {json.dumps(report['phases'][name], default=str)[:2000]}", flush=True)
        save()

    segcode_cuda = _load_segcode_cuda()
    build_dir = Path(tempfile.mkdtemp(prefix="segcode_gpu_"))
    try:
        library = segcode_cuda.build(build_dir, emulate=args.emulate)
    except subprocess.CalledProcessError as exc:
        report["build_error"] = exc.stderr
        save()
        print(exc.stderr, file=sys.stderr)
        return 1
    gpu, cpu = segcode_cuda.CudaSegcode(library), CpuSegcode(build_dir)
    if not args.emulate:
        phase("machine_code", lambda: segcode_cuda.machine_code_report(library))
    phase("golden", lambda: check_golden(gpu, cpu))
    phase("fuzz", lambda: check_fuzz(gpu, cpu, args.fuzz, seed=2026))
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",") if s]
    formats = tuple(int(f) for f in args.formats.split(",") if f)
    phase("throughput", lambda: check_throughput(gpu, cpu, sizes, args.reps, formats))
    phase("host_buffer", lambda: check_host_buffer(gpu, *(sizes[-1] if sizes else (4096, 1024)), args.reps))
    ok = all(report["phases"].get(p, {}).get("ok", True) for p in ("golden", "fuzz", "host_buffer"))
    report["ok"] = ok
    save()
    print(f"wrote {args.out}; golden and fuzz {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
