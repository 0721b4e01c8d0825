"""``seqkv demo``: a chat session on the default model, saved compressed, restored, continued."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..bench.snapshots import restore_all_ways, save_all_ways
from ..config import SeqKV
from ..sessions.prefill import prefill
from ..textdata import read_text

SYSTEM = "You are a careful assistant who answers questions about software licenses."
QUESTION = "\n\nIn two sentences: what must I do if I distribute a modified version of this program?"
N_ANSWER = 48
N_CONTINUE = 32


def chat_prompt(llm, n_tokens: int) -> list[int]:
    """A ChatML prompt (system, user pasting the GPL-3, a question) cut to ``n_tokens`` tokens."""
    text, _ = read_text()
    head = llm.tokenize(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n".encode(), special=True)
    tail = llm.tokenize(f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n".encode(), special=True, add_bos=False)
    body = llm.tokenize(text.encode(), add_bos=False)[: max(n_tokens - len(head) - len(tail), 0)]
    return head + body + tail


def greedy(llm, tokens: list[int], n: int) -> list[int]:
    out = []
    for token in llm.generate(tokens, top_k=1, temp=0.0, repeat_penalty=1.0):
        out.append(token)
        if len(out) == n:
            break
    return out


def run_demo(model_path: str, n_tokens: int, n_ctx: int, out: str | None) -> int:
    from ..llama import Llama

    def new_llama():
        return Llama(model_path=model_path, n_ctx=n_ctx, n_threads=os.cpu_count(), verbose=False, kv_compressor=SeqKV())

    llm = new_llama()
    prompt = chat_prompt(llm, n_tokens - N_ANSWER)
    prefill_s = prefill(llm, prompt, desc="prefill")
    answer = greedy(llm, prompt, N_ANSWER)
    history = prompt + answer
    print(f"session: {len(prompt)} prompt tokens + {len(answer)} generated; answer so far:\n  "
          + llm.detokenize(answer).decode(errors="replace").strip().replace("\n", " "))

    workdir = Path(out) if out else Path(tempfile.mkdtemp(prefix="seqkv-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ways = save_all_ways(llm, workdir, "demo")
    original_more = greedy(llm, history, N_CONTINUE)
    del llm
    fresh = new_llama()
    timed = restore_all_ways(fresh, ways)
    restored_more = greedy(fresh, history, N_CONTINUE)
    path, raw, raw_bytes, zstd3, saved = ways["path"], ways["raw"], ways["raw_bytes"], ways["zstd3"], ways["info"]
    raw_save_s, save_state_s, restored = ways["raw_save_s"], ways["save_state_s"], timed["restored"]
    raw_restore_s, load_state_s = timed["raw_restore_s"], timed["load_state_s"]

    rows = [
        ("llama.cpp raw C state file", raw_bytes, raw_save_s, raw_restore_s),
        ("llama-cpp-python save_state", raw.llama_state_size, save_state_s, load_state_s),
        ("zstd -3 of the raw state", zstd3, None, None),
        ("seqkv session (lossless)", saved.file_bytes, saved.seconds["total"], restored.seconds["total"]),
    ]
    print(f"\n{'':<30} {'bytes':>12} {'ratio':>8} {'save s':>8} {'restore s':>10} {'vs raw C':>9}")
    for name, size, save_s, load_s in rows:
        print(f"{name:<30} {size:>12,} {raw_bytes / size:>7.3f}x "
              f"{'' if save_s is None else f'{save_s:.3f}':>8} {'' if load_s is None else f'{load_s:.3f}':>10} "
              f"{'' if load_s is None else f'{load_s / raw_restore_s:.2f}x':>9}")
    print(f"{'re-prefill the tokens':<30} {'':>12} {'':>8} {'':>8} {prefill_s:>10.2f} "
          f"{prefill_s / raw_restore_s:>8.0f}x")
    print("raw C: llama_state_seq_get_data + write + fsync, then one read + llama_state_seq_set_data (llama-server's "
          "slot save/restore); ratios against its sequence state")
    same = original_more == restored_more
    print(f"\nsession file: {path} ({saved.n_tokens} tokens)")
    print(f"continuation after restore identical to the uninterrupted session: {same}")
    print("  " + fresh.detokenize(restored_more).decode(errors="replace").strip().replace("\n", " "))
    return 0 if same else 1
