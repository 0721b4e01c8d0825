"""Does a lossy session decode to the same bytes under every BLAS kernel and thread count?

Usage:
    python benchmarks/decode_determinism.py [--tokens 600] [--bits 2] [--model GGUF] [--text FILE]

Saves one lossy session of the model (default: the default model, ``SeqKV(kv="lossy", bits=2,
model_profile=True)``, the first ``--tokens`` tokens of the GPL-3 text, 2 threads), then restores it in fresh
subprocesses under each OpenBLAS kernel this CPU runs (``OPENBLAS_CORETYPE``) with 1 and 2 BLAS threads, and prints
the sha256 of each restored state. One distinct digest: the decoder is CPU-independent.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def new_llama(model_path: str, n_ctx: int):
    from seqkv_edge import Llama, SeqKV

    return Llama(model_path=model_path, n_ctx=n_ctx, n_threads=2, verbose=False,
                 kv_compressor=SeqKV(kv="lossy", bits=2.0, model_profile=True))


def restored_digest(session: str, model_path: str, n_ctx: int) -> str:
    from seqkv_edge.state.blob import read_seq_state

    llm = new_llama(model_path, n_ctx)
    llm.load_session(session)
    return hashlib.sha256(bytes(read_seq_state(llm.ctx))).hexdigest()


def settings() -> list[tuple[str, int]]:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cores = (["Haswell", "Zen"] if " avx2" in flags else []) + (["SkylakeX"] if " avx512f" in flags else [])
    return [(core, threads) for core in ["(default)"] + cores for threads in (1, 2)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=600)
    parser.add_argument("--model", default=None)
    parser.add_argument("--text", default=None)
    parser.add_argument("--restore", default=None, help=argparse.SUPPRESS)  # the subprocess side
    args = parser.parse_args()
    from seqkv_edge.models import default_model_path
    from seqkv_edge.textdata import read_text

    model_path = args.model or default_model_path()
    n_ctx = max(1024, args.tokens + 64)
    if args.restore:
        print(restored_digest(args.restore, model_path, n_ctx))
        return 0
    text, text_name = read_text(args.text)
    with tempfile.TemporaryDirectory() as tmp:
        session = str(Path(tmp) / "lossy.seqkv")
        llm = new_llama(model_path, n_ctx)
        llm.eval(llm.tokenize(text.encode())[:args.tokens])
        info = llm.save_session(session)
        del llm
        print(f"model {Path(model_path).name}, text {text_name}, {args.tokens} tokens, lossy 2 bits with the model "
              f"profile: {info.stored_bytes if hasattr(info, 'stored_bytes') else os.path.getsize(session):,} bytes")
        print(f"{'OPENBLAS_CORETYPE':>18}  {'BLAS threads':>12}  sha256 of the restored state")
        digests = set()
        for core, threads in settings():
            env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
            if core != "(default)":
                env["OPENBLAS_CORETYPE"] = core
            cmd = [sys.executable, __file__, "--tokens", str(args.tokens), "--restore", session, "--model", model_path]
            run = subprocess.run(cmd, capture_output=True, text=True, env=env)
            digest = run.stdout.strip() if run.returncode == 0 else f"failed: {run.stderr.strip()[-200:]}"
            digests.add(digest)
            print(f"{core:>18}  {threads:>12}  {digest[:32]}")
        print(f"distinct restored states: {len(digests)}")
    return 0 if len(digests) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
