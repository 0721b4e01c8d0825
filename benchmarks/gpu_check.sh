#!/usr/bin/env bash
# Device check of the segment coder's CUDA kernels, for an NVIDIA machine with no network:
#   bash benchmarks/gpu_check.sh [gpu_check.py options]      results: $OUT/gpu_check.json (+ .log, nvidia-smi)
# Needs python3 with numpy, gcc and nvcc only (cuobjdump + nvdisasm add the machine-code check); nothing is
# installed or downloaded. Without a GPU, `bash benchmarks/gpu_check.sh --emulate --sizes 512x256` runs the
# same script on kernels built for the host.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
export PATH="$PATH:/usr/local/cuda/bin"
{ nvidia-smi; nvcc --version; gcc --version | head -1; python3 -c 'import numpy; print("numpy", numpy.__version__)'; } \
    > "$OUT/environment.txt" 2>&1
timeout 560 python3 benchmarks/gpu_check.py --out "$OUT/gpu_check.json" "$@" 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
