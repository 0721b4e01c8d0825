"""The segment coder's CUDA kernels without a GPU: the kernel source run on an emulated grid gives the CPU
coder's bytes, and nvcc's machine code for them holds no fused multiply-add or approximate instruction."""
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from seqkv_edge.codecs import segcode, segcode_cuda

FIXTURES = Path(__file__).parent / "fixtures"
MANIFESTS = {fmt: json.loads((FIXTURES / f"segcode_v{fmt}_manifest.json").read_text()) for fmt in (1, 2)}
NVCC = shutil.which("nvcc")


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    if not shutil.which("g++"):
        pytest.skip("g++ is needed to build the kernels' host emulation")
    return segcode_cuda.CudaSegcode(segcode_cuda.build(tmp_path_factory.mktemp("segcode_emu"), emulate=True))


@pytest.mark.parametrize("fmt,name", [(fmt, name) for fmt, m in MANIFESTS.items() for name in sorted(m["cases"])])
def test_emulated_kernels_give_the_golden_bytes(emulated, fmt, name):
    case = MANIFESTS[fmt]["cases"][name]
    stream = (FIXTURES / f"segcode_v{fmt}_{name}.bin").read_bytes()
    data = np.load(FIXTURES / f"segcode_v{fmt}_{name}.npy")
    if case["kind"] == "int32":
        data = data.astype(np.int32)
        produced = emulated.encode(data, format=fmt)
        expected = data
    else:
        inv_step = np.load(FIXTURES / f"segcode_v{fmt}_{name}_inv_step.npy")
        produced = emulated.encode_f32(data, inv_step, format=fmt)
        expected = segcode.quantize(data, inv_step)
        step = (1.0 / inv_step).astype(np.float32)
        assert np.array_equal(emulated.decode_f32(stream, *data.shape, step),
                              segcode.decode_f32(stream, *data.shape, step))
    assert hashlib.sha256(produced).hexdigest() == case["sha256"]
    assert np.array_equal(emulated.decode(stream, *data.shape), expected)


@pytest.mark.parametrize("fmt", [1, 2])
@pytest.mark.parametrize("seed", range(6))
def test_emulated_kernels_and_cpu_decode_each_other(emulated, fmt, seed):
    rng = np.random.default_rng(100 + seed)
    shape = (int(rng.integers(1, 700 if fmt == 1 else 4500)), int(rng.integers(1, 300)))
    scale = float(rng.choice([0.2, 1.0, 4.0, 60.0, 5000.0]))
    q = np.clip(np.round(rng.laplace(0.0, scale, size=shape)), -32767, 32767).astype(np.int32)
    from_kernels, from_cpu = emulated.encode(q, format=fmt), segcode.encode(q, threads=2, format=fmt)
    assert from_kernels == from_cpu
    assert np.array_equal(segcode.decode(from_kernels, *shape), q)
    assert np.array_equal(emulated.decode(from_cpu, *shape), q)


@pytest.mark.parametrize("fmt", [1, 2])
def test_emulated_kernels_refuse_damaged_streams(emulated, fmt):
    q = np.round(np.random.default_rng(1).laplace(0.0, 2.0, size=(300, 130))).astype(np.int32)
    stream = segcode.encode(q, format=fmt)
    for bad in (stream[: len(stream) // 2], stream[:16] + b"\xff" * (len(stream) - 16)):
        with pytest.raises(RuntimeError, match="corrupt"):
            emulated.decode(bad, 300, 130)
    with pytest.raises(RuntimeError, match="another shape"):
        emulated.decode(stream, 301, 130)


def _machine_code_tools():
    if not NVCC:
        pytest.skip("nvcc is not installed")
    if not (segcode_cuda._tool("cuobjdump") and segcode_cuda._tool("nvdisasm")):
        pytest.skip("cuobjdump / nvdisasm are not installed (nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm)")


def test_kernels_machine_code_is_exact_on_every_architecture(tmp_path):
    _machine_code_tools()
    report = segcode_cuda.machine_code_report(segcode_cuda.build(tmp_path))
    assert report["sass_archs"] == ["sm_80", "sm_90"]
    assert report["ptx_targets"] == ["sm_75"]
    assert report["fused_multiply_add"] == [] and report["ptx_forbidden"] == []
    assert report["mufu"] == report["integer_division_seeds"]
    assert report["ok"]


def test_machine_code_check_catches_a_fused_multiply_add(tmp_path):
    """The check is not vacuous: a contracted a * b + c built the default way is reported."""
    _machine_code_tools()
    source = tmp_path / "fma.cu"
    source.write_text('extern "C" __global__ void axpy(const float *a, const float *b, float *c)\n'
                      "{ unsigned i = threadIdx.x; c[i] = a[i] * b[i] + c[i]; }\n")
    library = tmp_path / "libfma.so"
    subprocess.run([NVCC, "-O3", "-Xcompiler", "-fPIC", "-shared", "-gencode", "arch=compute_75,code=compute_75",
                    "-gencode", "arch=compute_90,code=sm_90", str(source), "-o", str(library)],
                   check=True, capture_output=True)
    report = segcode_cuda.machine_code_report(library)
    assert report["fused_multiply_add"] and report["ptx_forbidden"] and not report["ok"]


def test_host_buffer_is_writable_and_freed_after_its_last_view(emulated):
    import gc

    buf = emulated.host_buffer(4096)
    assert buf.dtype == np.uint8 and buf.shape == (4096,) and buf.flags.writeable
    buf[:] = 7
    view = memoryview(buf)[:16]
    del buf
    gc.collect()
    assert bytes(view) == b"\x07" * 16  # a view keeps the memory alive
    del view
    gc.collect()


def test_saves_coded_on_a_gpu_read_into_its_host_buffer_and_write_format_6(emulated, tiny_model_path, tmp_path,
                                                                          monkeypatch):
    """A lossy save whose state a GPU codes (here the emulated kernels standing in for CUDA) reads llama.cpp's state
    into the backend's page-locked buffer and writes format 6; the CPU restores it like any other file."""
    from seqkv_edge import Llama, SeqKV
    from seqkv_edge.codecs.kv_lossy import backend
    from seqkv_edge.container.session_file import Kind, read_container
    from seqkv_edge.state.blob import read_seq_state

    gpu = backend.CudaSegments(emulated)
    asked = []
    monkeypatch.setattr(gpu, "host_buffer", lambda n: asked.append(n) or emulated.host_buffer(n))
    monkeypatch.setattr(backend, "for_state", lambda device, kv_bytes, threads=None:
                        gpu if device == "cuda" else backend.CpuSegments(threads))
    settings = dict(kv="lossy", bits=3.0, model_profile=False)
    llm = Llama(model_path=tiny_model_path, n_ctx=512, verbose=False, kv_compressor=SeqKV(device="cuda", **settings))
    llm.eval(llm.tokenize(b"Pinned memory lets the GPU copy without a staging buffer. " * 4))
    llm.save_session(tmp_path / "gpu.seqkv")
    assert asked == [len(read_seq_state(llm.ctx))]
    llm.kv_compressor = SeqKV(device="cpu", **settings)
    llm.save_session(tmp_path / "cpu.seqkv")
    versions = {name: {p[0] for p in read_container(tmp_path / name).payloads(Kind.KV)}
                for name in ("gpu.seqkv", "cpu.seqkv")}
    assert versions == {"gpu.seqkv": {6}, "cpu.seqkv": {5}}
    for name in ("gpu.seqkv", "cpu.seqkv"):
        fresh = Llama(model_path=tiny_model_path, n_ctx=512, verbose=False, kv_compressor=SeqKV(device="cpu"))
        assert fresh.load_session(tmp_path / name).n_tokens == llm.n_tokens


def test_the_prepared_device_check_runs_end_to_end_emulated(tmp_path):
    """benchmarks/gpu_check.py, the device check, with its kernels built for the host: every phase passes."""
    import json
    import subprocess
    import sys

    out = tmp_path / "gpu_check.json"
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"
    run = subprocess.run([sys.executable, str(script), "--emulate", "--fuzz", "4", "--sizes", "700x130", "--reps", "1",
                          "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["ok"] and {"golden", "fuzz", "throughput", "host_buffer"} <= set(report["phases"])
    assert report["phases"]["host_buffer"]["ok"]
