"""``seqkv bench``: our session files against llama.cpp's raw state, zstd and re-prefill.

For each KV cache type it prefills the same text, then times and sizes: llama.cpp's own raw C path (the
sequence state written with ``llama_state_seq_get_data`` + write + fsync, restored with one read +
``llama_state_seq_set_data``: ``state.raw``, what llama-server's slot save/restore does), llama-cpp-python's
``Llama.save_state``/``load_state`` (a second baseline: Python copies of the whole-context state), zstd-3 of that
state, our ``save_session``/``load_session``, and re-prefilling the tokens; and checks the restored state is
bit-identical to the original.
"""
from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path
from typing import Optional

import zstandard

from ..config import SeqKV
from ..sessions.prefill import prefill
from ..state import llama_api
from ..state.blob import read_seq_state
from ..state.raw import raw_restore, raw_save

log = logging.getLogger(__name__)

CACHE_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}


def _new_llama(model_path: str, cache_type: str, n_ctx: int, n_threads: Optional[int]):
    from ..llama import Llama

    type_id = CACHE_TYPES[cache_type]
    return Llama(
        model_path=model_path, n_ctx=n_ctx, n_threads=n_threads or os.cpu_count(), verbose=False,
        type_k=type_id, type_v=type_id, flash_attn=cache_type != "f16",
        kv_compressor=SeqKV(n_threads=n_threads),
    )


def save_all_ways(llm, workdir: Path, name: str) -> dict:
    """Save ``llm``'s session three ways, timed: llama.cpp's raw C path, llama-cpp-python's ``save_state`` (and zstd
    -3 of it), and a session file."""
    raw_path, path = workdir / f"{name}.raw", workdir / f"{name}.seqkv"
    t = time.perf_counter()
    raw_bytes = raw_save(llm.ctx, raw_path)
    raw_save_s = time.perf_counter() - t
    t = time.perf_counter()
    raw = llm.save_state()
    save_state_s = time.perf_counter() - t
    return {"raw_path": raw_path, "raw_bytes": raw_bytes, "raw_save_s": raw_save_s, "raw": raw,
            "save_state_s": save_state_s, "zstd3": len(zstandard.ZstdCompressor(level=3).compress(raw.llama_state)),
            "path": path, "info": llm.save_session(path)}


def restore_all_ways(fresh, saved: dict) -> dict:
    """Restore what :func:`save_all_ways` wrote into ``fresh`` three ways, timed, from an empty context each time;
    the session file last (``fresh`` then holds it)."""
    t = time.perf_counter()
    raw_restore(fresh.ctx, saved["raw_path"])
    raw_restore_s = time.perf_counter() - t
    fresh.reset()
    llama_api.clear_cells(fresh)
    t = time.perf_counter()
    fresh.load_state(saved["raw"])
    load_state_s = time.perf_counter() - t
    fresh.reset()
    llama_api.clear_cells(fresh)
    return {"raw_restore_s": raw_restore_s, "load_state_s": load_state_s, "restored": fresh.load_session(saved["path"])}


def bench_cache_type(model_path, tokens, cache_type, workdir, n_ctx, n_threads, progress=True) -> dict:
    llm = _new_llama(model_path, cache_type, n_ctx, n_threads)
    prefill_s = prefill(llm, tokens, desc=f"prefill {cache_type}" if progress else None)
    original = bytes(read_seq_state(llm.ctx))

    saved = save_all_ways(llm, workdir, f"bench_{cache_type}")
    del llm
    fresh = _new_llama(model_path, cache_type, n_ctx, n_threads)
    timed = restore_all_ways(fresh, saved)
    exact = bytes(read_seq_state(fresh.ctx)) == original
    del fresh
    info, restored, raw, zstd3 = saved["info"], timed["restored"], saved["raw"], saved["zstd3"]
    raw_save_s, save_state_s = saved["raw_save_s"], saved["save_state_s"]
    raw_restore_s, load_state_s = timed["raw_restore_s"], timed["load_state_s"]
    return {
        "cache_type": cache_type,
        "tokens": len(tokens),
        "raw_state_bytes": raw.llama_state_size,
        "seq_state_bytes": info.raw_bytes,
        "zstd3_bytes": zstd3,
        "file_bytes": info.file_bytes,
        "ratio_vs_raw": info.raw_bytes / info.file_bytes,
        "ratio_vs_zstd3": zstd3 / info.file_bytes,
        "zstd3_ratio": raw.llama_state_size / zstd3,
        "raw_save_s": raw_save_s,
        "raw_restore_s": raw_restore_s,
        "save_state_s": save_state_s,
        "load_state_s": load_state_s,
        "save_session_s": info.seconds["total"],
        "load_session_s": restored.seconds["total"],
        "encode_mb_s": info.raw_bytes / 1e6 / max(info.seconds["encode"], 1e-9),
        "decode_mb_s": info.raw_bytes / 1e6 / max(restored.seconds["decode"], 1e-9),
        "prefill_s": prefill_s,
        "restore_speedup_vs_prefill": prefill_s / restored.seconds["total"],
        "save_vs_raw": info.seconds["total"] / raw_save_s,
        "restore_vs_raw": restored.seconds["total"] / raw_restore_s,
        "bit_exact": exact,
        "save_steps_s": info.seconds,
        "load_steps_s": restored.seconds,
    }


COLUMNS = [
    ("cache", "cache_type", "{}"), ("tokens", "tokens", "{}"), ("raw state B", "seq_state_bytes", "{:,}"),
    ("ours B", "file_bytes", "{:,}"), ("ratio", "ratio_vs_raw", "{:.4f}x"), ("zstd-3", "zstd3_ratio", "{:.4f}x"),
    ("vs zstd", "ratio_vs_zstd3", "{:.3f}x"), ("raw C save", "raw_save_s", "{:.3f}s"),
    ("save_session", "save_session_s", "{:.3f}s"), ("vs raw C", "save_vs_raw", "{:.2f}x"),
    ("raw C restore", "raw_restore_s", "{:.3f}s"), ("load_session", "load_session_s", "{:.3f}s"),
    ("vs raw C", "restore_vs_raw", "{:.2f}x"), ("py save_state", "save_state_s", "{:.3f}s"),
    ("py load_state", "load_state_s", "{:.3f}s"), ("re-prefill", "prefill_s", "{:.2f}s"),
    ("vs prefill", "restore_speedup_vs_prefill", "{:.0f}x"), ("exact", "bit_exact", "{}"),
]


def format_table(rows: list[dict]) -> str:
    cells = [[name for name, _, _ in COLUMNS]] + [[fmt.format(r[key]) for _, key, fmt in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def environment(n_threads: Optional[int] = None) -> dict:
    """What the figures were measured on: CPU, thread count (llama.cpp's and the codec's), weight repack."""
    import llama_cpp

    from ..hardware import cpu_has_amx, weight_repack_enabled

    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu": _cpu_model(), "amx": cpu_has_amx(), "weight_repack": weight_repack_enabled(),
            "threads": n_threads or os.cpu_count(),
            "python": platform.python_version(), "llama_cpp_python": llama_cpp.__version__}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", errors="replace") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()
