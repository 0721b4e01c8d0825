"""The lossy decoder gives the same bytes on every CPU: frozen sha256 of each lossy fixture's decoded state, the same
in subprocesses with other BLAS kernels and thread counts, and the fixed-order kernels (native/detmath.c) give the
same bits built for every instruction set, FMA-capable ones included, and with each of det_matmul's kernels."""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from lossy_fixtures import DIGESTS, NAMES, decoded_digests

from seqkv_edge import detmath
from seqkv_edge.native import require

HERE = Path(__file__).resolve().parent
NATIVE = HERE.parent / "native"


def sequential_matmul(x, w, init=None):
    """The defined result: each output summed over k in order, one float32 rounding per operation."""
    acc = np.zeros((x.shape[0], w.shape[1]), np.float32) if init is None else init.copy()
    for k in range(x.shape[1]):
        acc = acc + x[:, k:k + 1] * w[k:k + 1, :]
    return acc


@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 7, 3), (8, 64, 64), (13, 256, 48), (9, 384, 128), (4, 48, 33)])
def test_matmul_is_the_sequential_sum(shape):
    n, k, m = shape
    rng = np.random.default_rng(n * k * m)
    x, w = rng.standard_normal((n, k)).astype(np.float32), rng.standard_normal((k, m)).astype(np.float32)
    assert np.array_equal(detmath.matmul(x, w), sequential_matmul(x, w))
    out = rng.standard_normal((n, m)).astype(np.float32)
    want = sequential_matmul(x, w, init=out)
    assert np.array_equal(detmath.matmul(x, w, out=out, accumulate=True), want)


def test_per_head_writes_strided_head_blocks():
    rng = np.random.default_rng(3)
    x, mats = rng.standard_normal((10, 3 * 16)).astype(np.float32), rng.standard_normal((3, 16, 16)).astype(np.float32)
    got = detmath.per_head(x, mats, 3)
    for h in range(3):
        cols = slice(16 * h, 16 * h + 16)
        assert np.array_equal(got[:, cols], sequential_matmul(np.ascontiguousarray(x[:, cols]), mats[h]))
    with pytest.raises(ValueError, match="matrices"):
        detmath.per_head(x, mats[:2], 3)


def test_float64_functions_are_accurate():
    _, lib = require()
    for v in (1e-3, 0.5, 1.0, 2.0, 10000.0, 1e6, 5e7):
        assert math.isclose(lib.det_log(v), math.log(v), rel_tol=4e-16, abs_tol=1e-300)
    for v in (-30.0, -1.0, -1e-3, 0.0, 0.7, 20.0):
        assert math.isclose(lib.det_exp(v), math.exp(v), rel_tol=4e-16)
    ffi, _ = require()
    s, c = ffi.new("double *"), ffi.new("double *")
    for v in np.linspace(-2e5, 2e5, 997):
        lib.det_sincos(float(v), s, c)
        assert abs(s[0] - math.sin(v)) < 1e-15 * max(1.0, abs(v)) and abs(c[0] - math.cos(v)) < 1e-15 * max(1.0, abs(v))


def test_rope_angles_round_the_true_angles():
    positions = np.arange(0, 40000, 13, dtype=np.int32)
    cos, sin = detmath.rope_angles(positions, 64, 1e6, 0.5)
    theta = positions[:, None] * 0.5 * 1e6 ** (-np.arange(32) * 2 / 64)
    assert np.abs(cos - np.cos(theta)).max() < 6e-8 and np.abs(sin - np.sin(theta)).max() < 6e-8


def test_lossy_fixtures_decode_to_frozen_bytes():
    assert decoded_digests() == json.loads(DIGESTS.read_text())


def _blas_settings():
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cores = ["Haswell", "Zen"] if " avx2" in flags else []
    cores += ["SkylakeX"] if " avx512f" in flags else []
    return [(core, threads) for core in cores or [None] for threads in (1, 2)]


@pytest.mark.parametrize("core,threads", _blas_settings())
def test_fixtures_decode_the_same_with_every_blas_kernel(core, threads):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    if core:
        env["OPENBLAS_CORETYPE"] = core
    run = subprocess.run([sys.executable, str(HERE / "lossy_fixtures.py")], capture_output=True, text=True, env=env,
                         cwd=HERE, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    got = dict(line.split() for line in run.stdout.splitlines())
    assert got == json.loads(DIGESTS.read_text()) and set(got) == set(NAMES)


HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include "detmath.h"
int main(int argc, char **argv) {
    unsigned n = 37, k = 384, m = 48;
    float *x = malloc(n * k * 4), *w = malloc(k * m * 4), *out = malloc(n * m * 4);
    unsigned s = 12345;
    for (unsigned i = 0; i < n * k; i++) { s = s * 1103515245u + 12345u; x[i] = (float)((int)(s >> 8) % 2001 - 1000) / 37.0f; }
    for (unsigned i = 0; i < k * m; i++) { s = s * 1103515245u + 12345u; w[i] = (float)((int)(s >> 8) % 2001 - 1000) / 91.0f; }
    det_matmul(x, n, k, k, w, m, out, m, 0);
    int32_t pos[5] = {0, 1, 77, 4096, 131071};
    float c[5 * 32], sn[5 * 32];
    det_rope_angles(pos, 5, 64, 1000000.0, 1.0, c, sn);
    fwrite(out, 4, n * m, stdout); fwrite(c, 4, 160, stdout); fwrite(sn, 4, 160, stdout);
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_kernels_give_the_same_bits_for_every_instruction_set(tmp_path):
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    builds = [["-O0"], ["-O3"]] + ([["-O3", "-march=x86-64"]] if platform.machine() == "x86_64" else [])
    builds += [["-O3", "-mavx2", "-mfma"]] if " avx2" in flags and " fma" in flags else []
    builds += [["-O3", "-mavx512f", "-mfma"]] if " avx512f" in flags else []
    (tmp_path / "main.c").write_text(HARNESS)
    outputs = []
    for i, build in enumerate(builds):
        exe = tmp_path / f"det{i}"
        subprocess.run(["gcc", *build, "-std=c11", "-ffp-contract=off", f"-I{NATIVE}", str(tmp_path / "main.c"),
                        str(NATIVE / "detmath.c"), "-lm", "-o", str(exe)], check=True)
        for kernel in ("generic", "avx2", "widest"):  # det_matmul's kernels, each where this CPU runs it
            env = dict(os.environ, SEQKV_DETMATH_KERNEL=kernel)
            outputs.append(subprocess.run([str(exe)], capture_output=True, check=True, env=env).stdout)
    assert len(outputs) >= 6 and all(o == outputs[0] for o in outputs)


@pytest.mark.parametrize("kernel", ["generic", "avx2", "widest"])
def test_every_matmul_kernel_gives_the_sequential_sums(kernel):
    """Each register-tile shape det_matmul picks per instruction set, at every edge (rows and columns short of a
    tile), gives the defined sums: in a fresh process, which picks its kernel once."""
    code = ("import numpy as np, sys; sys.path.insert(0, %r); from test_decode_determinism import sequential_matmul; "
            "from seqkv_edge import detmath\n"
            "for n, k, m in [(1, 3, 1), (7, 5, 3), (8, 9, 32), (9, 64, 64), (17, 256, 48), (23, 48, 33), (40, 16, 70)]:\n"
            "    rng = np.random.default_rng(n * k * m)\n"
            "    x, w = rng.standard_normal((n, k)).astype(np.float32), rng.standard_normal((k, m)).astype(np.float32)\n"
            "    out = rng.standard_normal((n, m)).astype(np.float32)\n"
            "    assert np.array_equal(detmath.matmul(x, w), sequential_matmul(x, w)), (n, k, m)\n"
            "    want = sequential_matmul(x, w, init=out)\n"
            "    assert np.array_equal(detmath.matmul(x, w, out=out, accumulate=True), want), (n, k, m)\n") % str(HERE)
    env = dict(os.environ, SEQKV_DETMATH_KERNEL=kernel)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
