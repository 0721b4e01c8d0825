"""Where format 6 of the lossy codec entropy-codes: the segment coder (format 2) on the CPU, an NVIDIA GPU or wgpu.

Every backend runs the per-segment core of ``native/segcode_core.h`` (the CUDA kernels that C source, the wgpu
shader its WGSL translation) and gives the same bytes, so the device is a setting of the machine, never of the
stream: ``KVLossyCodec(device=...)`` leaves the codec config alone.

- ``"cpu"``: :mod:`seqkv_edge.codecs.segcode`, segments split across threads;
- ``"cuda"``: :mod:`seqkv_edge.codecs.segcode_cuda`'s kernels, compiled with nvcc at first use into
  ``$SEQKV_HOME/segcode_cuda`` (needs the CUDA toolkit and a GPU);
- ``"metal"``: :mod:`seqkv_edge.codecs.segcode_wgpu`'s compute shaders code the segments, through wgpu (the
  ``[metal]`` extra): on Metal on macOS, on Vulkan elsewhere (Mesa's lavapipe, a CPU rasterizer, where there is no
  GPU). The C core quantizes and fits the models;
- ``"auto"``: the CUDA GPU when one is usable and the state holds more than :data:`AUTO_CUDA_BYTES` of KV, else the
  CPU (never wgpu: on Linux it is often lavapipe, slower than the CPU coder).

Sessions saved where a GPU codes them are written in format 6 (``sessions.snapshot``), the others in the default
format; with CUDA, llama.cpp's state is read into page-locked memory (``CudaSegments.host_buffer``), and flash
attention keeps that read to one copy per layer (without it llama.cpp copies the transposed V one channel at a time).
"""
from __future__ import annotations

import logging
import os
import subprocess
import threading
from pathlib import Path

import numpy as np

from ...errors import CorruptDataError
from .. import segcode

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "metal")
AUTO_CUDA_BYTES = 256 << 20  # below this the copies to and from the GPU cost more than the CPU coder
SEGMENT_FORMAT = 2
LOSSY_FORMAT = 6  # the lossy format whose streams are in SEGMENT_FORMAT: what a GPU backend codes

__all__ = ["DEVICES", "AUTO_CUDA_BYTES", "CpuSegments", "CudaSegments", "WgpuSegments", "cuda_segments",
           "wgpu_segments", "for_state", "gpu_for_state"]


def _usable_cores() -> int:
    """The cores this process may run on (its affinity where the platform says), at least one."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class CpuSegments:
    """The segment coder on this machine's cores (``threads`` None: all of them)."""

    device = "cpu"

    def __init__(self, threads: int | None = None):
        self.threads = threads if threads is not None else _usable_cores()

    def encode_rows(self, rows: np.ndarray, inv_step: np.ndarray, step: np.ndarray, out: np.ndarray | None) -> bytes:
        """Quantize ``rows`` with ``inv_step`` and code the indices; ``out`` receives ``index * step`` (one pass)."""
        if out is None:
            return segcode.encode_f32(rows, inv_step, threads=self.threads, format=SEGMENT_FORMAT)
        rec = out if out.flags.c_contiguous else np.empty(out.shape, np.float32)
        coded = segcode.encode_f32(rows, inv_step, threads=self.threads, format=SEGMENT_FORMAT, step=step, out=rec)
        if rec is not out:
            out[...] = rec
        return coded

    def decode_f32(self, buf, n_rows: int, n_channels: int, step: np.ndarray, out: np.ndarray) -> np.ndarray:
        return segcode.decode_f32(buf, n_rows, n_channels, step, threads=self.threads, out=out)


class CudaSegments:
    """The segment coder's kernels (``segcode_cuda.CudaSegcode``) behind the same two calls as :class:`CpuSegments`."""

    device = "cuda"

    def __init__(self, coder):
        self.coder = coder
        # one call at a time: each runs synchronously on the default stream (and the host emulation of the
        # kernels keeps its grid in globals)
        self._lock = threading.Lock()

    def encode_rows(self, rows: np.ndarray, inv_step: np.ndarray, step: np.ndarray, out: np.ndarray | None) -> bytes:
        """As :meth:`CpuSegments.encode_rows`: the kernels quantize and code; ``out`` is computed here (the same
        ``segcode`` arithmetic)."""
        if out is not None:
            out[...] = segcode.dequantize(segcode.quantize(rows, inv_step), step)
        with self._lock:
            return self.coder.encode_f32(rows, inv_step, format=SEGMENT_FORMAT)

    def host_buffer(self, n: int) -> np.ndarray:
        """``n`` bytes of page-locked host memory to read llama.cpp's state into (``CudaSegcode.host_buffer``)."""
        return self.coder.host_buffer(n)

    def decode_f32(self, buf, n_rows: int, n_channels: int, step: np.ndarray, out: np.ndarray) -> np.ndarray:
        with self._lock:
            try:
                out[...] = self.coder.decode_f32(bytes(buf), n_rows, n_channels, step)
            except RuntimeError as exc:
                if "corrupt" in str(exc) or "another shape" in str(exc):
                    raise CorruptDataError(str(exc)) from exc
                raise
        return out


class WgpuSegments:
    """The format-2 shaders on wgpu (``segcode_wgpu.WgpuSegcode``) behind the calls of :class:`CpuSegments`; the C
    core quantizes and fits each tensor's models on ``threads``."""

    device = "metal"

    def __init__(self, coder, threads: int | None = None):
        self.coder = coder
        self.threads = threads if threads is not None else _usable_cores()

    def encode_rows(self, rows: np.ndarray, inv_step: np.ndarray, step: np.ndarray, out: np.ndarray | None) -> bytes:
        """As :meth:`CpuSegments.encode_rows`: the indices and ``out`` from the C core, the segments coded by the
        shader."""
        q = segcode.quantize(rows, inv_step)
        if out is not None:
            out[...] = segcode.dequantize(q, step)
        return self.coder.encode(q, threads=self.threads)

    def decode_f32(self, buf, n_rows: int, n_channels: int, step: np.ndarray, out: np.ndarray) -> np.ndarray:
        out[...] = self.coder.decode_f32(buf, n_rows, n_channels, step)  # CorruptDataError on a damaged stream
        return out


_wgpu_lock = threading.Lock()
_wgpu = None


def wgpu_segments(threads: int | None = None) -> WgpuSegments:
    """The wgpu backend (its pipeline built on first use); ``RuntimeError`` saying what is missing when there is
    none."""
    global _wgpu
    with _wgpu_lock:
        if _wgpu is None:
            from .. import segcode_wgpu

            try:
                _wgpu = segcode_wgpu.WgpuSegcode()
            except ImportError as exc:
                raise RuntimeError("KVLossyCodec(device='metal'): wgpu is not installed; pip install "
                                   "'seqkv_edge[metal]', or use device='cpu' (the same bytes)") from exc
            except RuntimeError as exc:
                raise RuntimeError(f"KVLossyCodec(device='metal'): {exc} (Metal on macOS, Vulkan elsewhere: "
                                   "mesa-vulkan-drivers gives a software one); or use device='cpu' "
                                   "(the same bytes)") from exc
        return WgpuSegments(_wgpu, threads)


_cuda_lock = threading.Lock()
_cuda: CudaSegments | None = None


def _library_dir() -> Path:
    from ...models import seqkv_home

    return seqkv_home() / "segcode_cuda"


def cuda_segments() -> CudaSegments:
    """The CUDA backend, built on first use; ``RuntimeError`` saying what is missing when there is none."""
    global _cuda
    with _cuda_lock:
        if _cuda is not None:
            return _cuda
        from .. import segcode_cuda

        nvcc = _nvcc()
        if nvcc is None:
            raise RuntimeError("KVLossyCodec(device='cuda'): nvcc (the CUDA toolkit, or the [cuda] extra's "
                               "nvidia-cuda-nvcc) is not found; install it, or use device='cpu' (the same bytes)")
        out_dir = _library_dir()
        out_dir.mkdir(parents=True, exist_ok=True)
        library = out_dir / "libsegcode_cuda.so"
        source = segcode_cuda.SOURCE
        if not library.exists() or library.stat().st_mtime < max(source.stat().st_mtime,
                                                                 (source.parent / "segcode_core.h").stat().st_mtime):
            logger.info("building the segment coder's CUDA kernels into %s", out_dir)
            try:
                library = segcode_cuda.build(out_dir, nvcc=nvcc)
            except subprocess.CalledProcessError as exc:
                raise RuntimeError(f"KVLossyCodec(device='cuda'): {nvcc} failed to build the kernels: "
                                   f"{exc.stderr[-2000:]}") from exc
        try:
            coder = segcode_cuda.CudaSegcode(library)
        except OSError as exc:
            raise RuntimeError(f"KVLossyCodec(device='cuda'): the kernels' library does not load ({exc}); is the "
                               "CUDA runtime installed?") from exc
        n_gpus = coder.device_count()
        if n_gpus < 1:
            raise RuntimeError("KVLossyCodec(device='cuda'): the CUDA runtime finds no GPU "
                               f"(cudaGetDeviceCount: {n_gpus}); use device='cpu' (the same bytes)")
        _cuda = CudaSegments(coder)
        return _cuda


def _nvcc() -> str | None:
    """nvcc from PATH, the nvidia-cuda-nvcc wheel, or the usual toolkit folder."""
    from .. import segcode_cuda

    found = segcode_cuda._tool("nvcc")
    if found is None and Path("/usr/local/cuda/bin/nvcc").exists():
        found = "/usr/local/cuda/bin/nvcc"
    return found


_usable: bool | None = None


def _cuda_usable() -> bool:
    """Whether ``"auto"`` may pick the GPU: an NVIDIA driver is loaded, nvcc is there and the kernels run (checked
    once; without a driver nothing is built)."""
    global _usable
    if _usable is None:
        _usable = False
        if (not os.environ.get("SEQKV_NO_CUDA") and Path("/proc/driver/nvidia/version").exists()
                and _nvcc() is not None):
            try:
                cuda_segments()
                _usable = True
            except (RuntimeError, OSError) as exc:
                logger.warning("device='auto' stays on the CPU: %s", exc)
    return _usable


def gpu_for_state(device: str, kv_bytes: int):
    """The GPU backend ``device`` puts a state of ``kv_bytes`` on, or None when it stays on the CPU (``"cpu"``, or
    ``"auto"`` below :data:`AUTO_CUDA_BYTES` or without a usable GPU)."""
    coder = for_state(device, kv_bytes)
    return None if isinstance(coder, CpuSegments) else coder


def for_state(device: str, kv_bytes: int, threads: int | None = None):
    """The backend ``device`` names for a state of ``kv_bytes`` bytes of KV (``"auto"``: see the module)."""
    if device == "cpu" or (device == "auto" and (kv_bytes <= AUTO_CUDA_BYTES or not _cuda_usable())):
        return CpuSegments(threads)
    if device in ("cuda", "auto"):
        return cuda_segments()
    if device == "metal":
        return wgpu_segments(threads)
    raise ValueError(f"device={device!r}: choose one of {DEVICES}")
