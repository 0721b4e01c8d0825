"""The segment coder's CUDA kernels (``native/segcode_cuda.cu``): build, inspect and call them.

The kernels run ``native/segcode_core.h``, the per-segment code of the CPU coder
(:mod:`seqkv_edge.codecs.segcode`), one GPU thread per segment, so the bytes are the CPU's. Built with
``emulate=True`` the same source compiles as plain C++ and runs every kernel on the host over an
emulated grid, through the same host API: that is how the kernels are tested without a GPU.

:func:`machine_code_report` reads what nvcc made of them: the kernels must hold no floating-point
fused multiply-add (FFMA/DFMA, ``fma`` in PTX), no approximate or transcendental instruction, and only
the reciprocal that seeds nvcc's exact integer division (``I2F.*.RP`` then ``MUFU.RCP``).
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import weakref
from pathlib import Path

import numpy as np

__all__ = ["NATIVE_DIR", "ARCHS", "build", "machine_code_report", "CudaSegcode"]

NATIVE_DIR = Path(__file__).resolve().parents[2] / "native"
SOURCE = NATIVE_DIR / "segcode_cuda.cu"
# PTX for compute_75 (any later GPU JIT-compiles it) plus machine code for A100 and H100
ARCHS = ("-gencode", "arch=compute_75,code=compute_75", "-gencode", "arch=compute_80,code=sm_80",
         "-gencode", "arch=compute_90,code=sm_90")

_ERRORS = {-1: "bad argument", -2: "index out of range", -3: "out of memory", -4: "corrupt stream",
           -5: "stream holds another shape", -6: "output buffer too small", -7: "thread start failed",
           -8: "CUDA runtime call failed"}


def build(out_dir: str | os.PathLike, emulate: bool = False, nvcc: str = "nvcc", archs=ARCHS) -> Path:
    """Compile the kernels and their host API into a shared library in out_dir; returns its path."""
    out = Path(out_dir) / ("libsegcode_emu.so" if emulate else "libsegcode_cuda.so")
    if emulate:
        cmd = [os.environ.get("CXX", "g++"), "-O2", "-std=c++11", "-ffp-contract=off", "-DSEGC_EMULATE",
               "-x", "c++", "-fPIC", "-shared", str(SOURCE), "-o", str(out)]
    else:
        cmd = [nvcc, "-O3", "--fmad=false", "-Xcompiler", "-fPIC,-ffp-contract=off", "-shared", *archs,
               str(SOURCE), "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


def _tool(name: str) -> str | None:
    """A CUDA binary tool from PATH, or from the nvidia-cuda-* wheels' bin folders."""
    found = shutil.which(name)
    if found:
        return found
    try:
        import nvidia  # namespace package of the nvidia-cuda-* wheels
    except ImportError:
        return None
    for root in nvidia.__path__:
        for candidate in Path(root).glob(f"*/bin/{name}"):
            return str(candidate)
    return None


def machine_code_report(library: str | os.PathLike) -> dict:
    """Counts of the floating-point instructions in the library's SASS and PTX, and the verdict.

    Needs cuobjdump and nvdisasm (PATH or the nvidia-cuda-cuobjdump / -nvdisasm wheels).
    """
    cuobjdump, nvdisasm = _tool("cuobjdump"), _tool("nvdisasm")
    if not cuobjdump or not nvdisasm:
        raise FileNotFoundError("cuobjdump and nvdisasm are needed to read the kernels' machine code")
    env = dict(os.environ, PATH=f"{Path(nvdisasm).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    sass = subprocess.run([cuobjdump, "-sass", str(library)], check=True, capture_output=True, text=True,
                          env=env).stdout
    ptx = subprocess.run([cuobjdump, "-ptx", str(library)], check=True, capture_output=True, text=True).stdout
    archs = sorted(set(re.findall(r"code for (sm_\d+)", sass)))
    ops = re.findall(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9]*(?:\.[A-Z0-9_]+)*)([^;]*);", sass)
    fma = [f"{op}{args}" for op, args in ops if re.match(r"[HFD]FMA", op)
           and not (op.startswith("HFMA2") and re.match(r"\s*R\w*, -RZ, RZ,", args))]  # HFMA2 -RZ*RZ+c: a move
    mufu = [op for op, _ in ops if op.startswith("MUFU")]
    rcp_seeds = [op for op, _ in ops if re.match(r"I2F\.(U32|U64|S32|S64)\.RP", op)]
    ptx_bad = re.findall(r"\b(fma\.\w+\.f(?:16|32|64)|\w+\.approx\.\w+|ex2\.\S+|lg2\.\S+|sin\.\S+|cos\.\S+|"
                         r"rsqrt\.\S+|sqrt\.\S+|rcp\.\S+)", ptx)
    ok = (bool(archs) and not fma and all(op == "MUFU.RCP" for op in mufu) and len(mufu) == len(rcp_seeds)
          and not ptx_bad and ".target sm_75" in ptx)
    return {"sass_archs": archs, "ptx_targets": sorted(set(re.findall(r"\.target (sm_\d+)", ptx))),
            "n_instructions": len(ops), "fused_multiply_add": fma, "mufu": len(mufu),
            "integer_division_seeds": len(rcp_seeds), "ptx_forbidden": ptx_bad,
            "float_ops": sorted({op for op, _ in ops if re.match(r"(F|D|H)(ADD|MUL|FMA|SETP|MNMX)", op)}),
            "ok": ok}


class CudaSegcode:
    """The host API of a built library (:func:`build`): segment coding on the GPU, or emulated on the host."""

    def __init__(self, library: str | os.PathLike):
        self.lib = lib = ctypes.CDLL(str(library))
        p, u32, i64 = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int64
        for name, args in {
            "segc_cuda_encode_bound": [u32, u32],
            "segc_cuda_encode": [p, u32, u32, p, i64, p],
            "segc_cuda_encode_f32": [p, p, u32, u32, p, i64, p],
            "segc_cuda_decode": [p, i64, u32, u32, p, p],
            "segc_cuda_decode_f32": [p, i64, u32, u32, p, p, p],
            "segc2_cuda_encode_bound": [u32, u32],
            "segc2_cuda_encode": [p, u32, u32, p, i64, p],
            "segc2_cuda_encode_f32": [p, p, u32, u32, p, i64, p],
            "segc2_cuda_decode": [p, i64, u32, u32, p, p],
            "segc2_cuda_decode_f32": [p, i64, u32, u32, p, p, p],
        }.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, i64
        lib.segc_cuda_device_count.argtypes, lib.segc_cuda_device_count.restype = [], ctypes.c_int
        lib.segc_cuda_host_alloc.argtypes, lib.segc_cuda_host_alloc.restype = [ctypes.c_uint64, p], ctypes.c_int
        lib.segc_cuda_host_free.argtypes, lib.segc_cuda_host_free.restype = [p], None
        self.last_ms = (0.0, 0.0, 0.0)  # host->device, kernels, device->host of the last call

    @staticmethod
    def _ptr(a: np.ndarray) -> int:
        return a.ctypes.data

    def _call(self, fn, *args) -> int:
        ms = (ctypes.c_double * 3)()
        rc = fn(*args, ms)
        if rc < 0:
            raise RuntimeError(f"{fn.__name__}: {_ERRORS.get(rc, 'error')} (code {rc})")
        self.last_ms = tuple(ms)
        return rc

    def host_buffer(self, n: int) -> np.ndarray:
        """``n`` bytes of page-locked host memory (``cudaHostAlloc``; plain memory when emulating) as a writable
        uint8 array, freed when the array and every view of it are gone: copies between it and the GPU need no
        staging buffer (llama.cpp's reads of an offloaded KV cache, the kernels' inputs)."""
        ptr = ctypes.c_void_p()
        if self.lib.segc_cuda_host_alloc(n, ctypes.byref(ptr)) != 0 or not ptr.value:
            raise MemoryError(f"segc_cuda_host_alloc: {n} bytes of page-locked host memory")
        array = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_uint8)), shape=(n,))
        weakref.finalize(array, self.lib.segc_cuda_host_free, ptr.value)
        return array

    def device_count(self) -> int:
        """GPUs the CUDA runtime sees (0 for the host emulation), or a negative code."""
        return int(self.lib.segc_cuda_device_count())

    def _api(self, name: str, format: int):
        if format not in (1, 2):
            raise ValueError(f"segment coder format {format}: the kernels write (1, 2)")
        return getattr(self.lib, f"segc{'' if format == 1 else '2'}_cuda_{name}")

    @staticmethod
    def _version(buf) -> int:
        return buf[4] if len(buf) > 4 and buf[4] == 2 else 1

    def encode(self, q: np.ndarray, format: int = 1) -> bytes:
        q = np.ascontiguousarray(q, dtype=np.int32)
        cap = self._api("encode_bound", format)(*q.shape)
        out = np.empty(cap, dtype=np.uint8)
        n = self._call(self._api("encode", format), self._ptr(q), q.shape[0], q.shape[1], self._ptr(out), cap)
        return out[:n].tobytes()

    def encode_f32(self, x: np.ndarray, inv_step: np.ndarray, format: int = 1) -> bytes:
        x = np.ascontiguousarray(x, dtype=np.float32)
        inv_step = np.ascontiguousarray(inv_step, dtype=np.float32)
        cap = self._api("encode_bound", format)(*x.shape)
        out = np.empty(cap, dtype=np.uint8)
        n = self._call(self._api("encode_f32", format), self._ptr(x), self._ptr(inv_step), x.shape[0], x.shape[1],
                       self._ptr(out), cap)
        return out[:n].tobytes()

    def decode(self, buf: bytes, n_cells: int, n_channels: int) -> np.ndarray:
        """Decode a stream of format 1 or 2 (its header says which)."""
        src = np.frombuffer(buf, dtype=np.uint8)
        q = np.empty((n_cells, n_channels), dtype=np.int32)
        self._call(self._api("decode", self._version(buf)), self._ptr(src), src.size, n_cells, n_channels,
                   self._ptr(q))
        return q

    def decode_f32(self, buf: bytes, n_cells: int, n_channels: int, step: np.ndarray) -> np.ndarray:
        src = np.frombuffer(buf, dtype=np.uint8)
        step = np.ascontiguousarray(step, dtype=np.float32)
        x = np.empty((n_cells, n_channels), dtype=np.float32)
        self._call(self._api("decode_f32", self._version(buf)), self._ptr(src), src.size, n_cells, n_channels,
                   self._ptr(step), self._ptr(x))
        return x
