"""``seqkv bench --tiers tokens``: sessions stored as tokens against the Shannon limit and the raw state.

Per session (two English texts and a chat whose answers the model generated): tokens, the ideal
code length under the model (sum of -log2 p, from one-token steps), the files of the model, hybrid
and portable tiers, zstd-19 of the int32 ids, the raw f16 state, and restore seconds of each tier
against the lossless KV snapshot.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import zstandard
from tqdm import tqdm

from ..config import SeqKV
from ..container.session_file import Kind, read_container
from ..sessions import tokens as token_session
from ..sessions.prefill import prefill

TEXTS = {"GPL-3": "/usr/share/common-licenses/GPL-3", "fortunes/literature": "/usr/share/games/fortunes/literature"}
# the lossy snapshot measured beside the token tiers: the README's setting (bits per KV value, model profile)
LOSSY_BITS = 2.0
QUESTIONS = [
    "What is a hash table? Answer in three sentences.",
    "Write a Python function that reverses a linked list.",
    "Why is the sky blue?",
]


def _llama(model_path, n_ctx, tokens="hybrid", kv="none"):
    from ..llama import Llama

    return Llama(model_path=model_path, n_ctx=n_ctx, n_threads=os.cpu_count(), verbose=False,
                 kv_compressor=SeqKV(kv=kv, tokens=tokens))


def text_session(llm, path: str, n_tokens: int) -> float:
    text = Path(path).read_text(errors="replace")
    tokens = llm.tokenize(text.encode())[:n_tokens]
    return prefill(llm, tokens, desc="prefill")


def chat_session(llm, n_answer: int) -> tuple[float, int]:
    """A multi-turn chat; returns generation seconds and the number of generated tokens."""
    history, seconds, generated = [], 0.0, 0
    for question in QUESTIONS:
        turn = f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
        history += llm.tokenize(turn.encode(), special=True, add_bos=False)
        start, answer = time.perf_counter(), 0
        for token in llm.generate(history, top_k=1, temp=0.0, repeat_penalty=1.1):
            if token == llm.token_eos():
                break
            history.append(token)
            answer += 1
            if answer == n_answer:
                break
        generated += answer
        seconds += time.perf_counter() - start
        history += llm.tokenize(b"<|im_end|>\n", special=True, add_bos=False)
    llm.eval(history[llm.n_tokens:])
    return seconds, generated


def measure_session(name: str, llm, model_path: str, n_ctx: int, workdir: Path) -> dict:
    tokens = np.asarray(llm.input_ids[: llm.n_tokens], dtype=np.int32)
    files, slug = {}, "".join(c if c.isalnum() else "_" for c in name)
    for tier in ("hybrid", "portable"):
        llm.kv_compressor = SeqKV(kv="none", tokens=tier)
        files[tier] = workdir / f"{slug}.{tier}.seqkv"
        llm.save_session(files[tier])
    llm.kv_compressor = SeqKV(kv="lossless")
    files["snapshot"] = workdir / f"{slug}.snapshot.seqkv"
    raw_bytes = llm.save_session(files["snapshot"]).raw_bytes
    llm.kv_compressor = SeqKV(kv="lossy", bits=LOSSY_BITS, model_profile=True)
    files["lossy"] = workdir / f"{slug}.lossy.seqkv"
    llm.save_session(files["lossy"])

    ideal: list = []
    start = time.perf_counter()
    files["model"] = workdir / f"{slug}.model.seqkv"
    with tqdm(total=len(tokens), desc=f"{name}: one-token pass", unit="tok", leave=False) as bar:
        token_session.save(llm, files["model"], SeqKV(kv="none", tokens="model"),
                           progress=lambda done, total: bar.update(done - bar.n), ideal=ideal)
    model_pass_s = time.perf_counter() - start

    restore = {}
    for tier, path in files.items():
        fresh = _llama(model_path, n_ctx, tokens="hybrid" if tier == "hybrid" else "portable",
                       kv="lossless" if tier in ("snapshot", "lossy") else "none")
        with tqdm(total=len(tokens), desc=f"{name}: restore {tier}", unit="tok", leave=False) as bar:
            info = fresh.load_session(path, progress=lambda done, total: bar.update(done - bar.n))
        restore[tier] = info.seconds["total"]
        assert list(fresh.input_ids[: fresh.n_tokens]) == tokens.tolist(), f"{tier} restore lost tokens"
        del fresh
    size = {tier: path.stat().st_size for tier, path in files.items()}
    return {
        "session": name, "tokens": len(tokens), "ideal_bits": float(np.sum(ideal)),
        "ideal_bytes": float(np.sum(ideal)) / 8, "model_bytes": size["model"], "hybrid_bytes": size["hybrid"],
        "portable_bytes": size["portable"], "snapshot_bytes": size["snapshot"], "lossy_bytes": size["lossy"],
        "zstd19_ids_bytes": len(zstandard.ZstdCompressor(level=19).compress(tokens.astype("<i4").tobytes())),
        "raw_state_bytes": raw_bytes,
        "model_payload_bytes": len(read_container(files["model"]).payload(Kind.MODEL_TOKENS)),
        "model_pass_s": model_pass_s, "restore_s": restore,
    }


def generation_overhead(model_path: str, n_ctx: int, n_tokens: int = 96) -> dict:
    """Seconds to generate ``n_tokens`` greedily with and without capturing the hybrid codes."""
    prompt_text = "<|im_start|>user\nExplain how a compiler works.<|im_end|>\n<|im_start|>assistant\n"
    out = {}
    for tier in ("portable", "hybrid", "portable", "hybrid"):
        llm = _llama(model_path, n_ctx, tokens=tier)
        prompt = llm.tokenize(prompt_text.encode(), special=True)
        llm.eval(prompt)
        start = time.perf_counter()
        for _, _token in zip(range(n_tokens), llm.generate(prompt, top_k=1, temp=0.0)):
            pass
        out.setdefault(tier, []).append(time.perf_counter() - start)
        del llm
    best = {tier: min(times) for tier, times in out.items()}
    return {"generated_tokens": n_tokens, "plain_s": best["portable"], "capturing_s": best["hybrid"],
            "overhead": best["hybrid"] / best["portable"] - 1}


def run(model_path: str, n_tokens: int, n_answer: int, n_ctx: int = 4096) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in TEXTS.items():
            llm = _llama(model_path, n_ctx)
            text_session(llm, path, n_tokens)
            rows.append(measure_session(name, llm, model_path, n_ctx, Path(tmp)))
            del llm
        llm = _llama(model_path, n_ctx)
        _, generated = chat_session(llm, n_answer)
        row = measure_session("generated chat", llm, model_path, n_ctx, Path(tmp))
        row["generated_tokens"] = generated
        rows.append(row)
        del llm
    return {"rows": rows, "generation": generation_overhead(model_path, n_ctx)}


def format_table(rows: list[dict]) -> str:
    head = (f"{'session':<20} {'tokens':>6} {'ideal B':>8} {'bits/tok':>8} {'model B':>8} {'/ideal':>7} {'hybrid B':>8} "
            f"{'portable B':>10} {'bits/tok':>8} {'zstd19 B':>8} {'raw f16 B':>11} {'raw/model':>10} "
            f"{'restore model/hybrid/portable/snapshot s':>42}")
    lines = [head, "-" * len(head)]
    for r in rows:
        n, rs = r["tokens"], r["restore_s"]
        lines.append(
            f"{r['session']:<20} {n:>6} {r['ideal_bytes']:>8.0f} {r['ideal_bits'] / n:>8.2f} {r['model_bytes']:>8} "
            f"{r['model_bytes'] / r['ideal_bytes']:>7.3f} {r['hybrid_bytes']:>8} {r['portable_bytes']:>10} "
            f"{8 * r['portable_bytes'] / n:>8.2f} {r['zstd19_ids_bytes']:>8} {r['raw_state_bytes']:>11,} "
            f"{r['raw_state_bytes'] / r['model_bytes']:>9,.0f}x "
            f"{rs['model']:>9.2f} / {rs['hybrid']:.2f} / {rs['portable']:.2f} / {rs['snapshot']:.3f}")
    return "\n".join(lines)
