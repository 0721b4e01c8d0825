"""Sliding-window (iSWA) restores: llama.cpp's raw sequence-state restore against the same state with the window's
cells back in their slots (``seqkv_edge.state.swa``), on Gemma 3 270M.

Usage:
    python benchmarks/swa_restore.py [--tokens 400,700,1000,1500] [--next 24] [--model gemma3-270m]

For each session length and flash-attention setting: the first N tokens of the GPL-3 text are evaluated, the
sequence state read (``llama_state_seq_get_data``) and written into a fresh context (``set_data``), and the next
--next tokens evaluated one at a time in both; prints the largest absolute logit difference against the
uninterrupted context (0: bit-identical).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="400,700,1000,1500")
    parser.add_argument("--next", type=int, default=24)
    parser.add_argument("--model", default="gemma3-270m")
    args = parser.parse_args()
    from seqkv_edge import Llama
    from seqkv_edge.models import model_path
    from seqkv_edge.state import llama_api
    from seqkv_edge.state.blob import read_seq_state, write_seq_state
    from seqkv_edge.state.swa import window_slots
    from seqkv_edge.textdata import read_text

    path = model_path(args.model)

    def logits(llm, tokens):
        rows = []
        for token in tokens:
            llm.eval([token])
            rows.append(np.ctypeslib.as_array(llama_api.logits(llm), shape=(llm.n_vocab(),)).copy())
        return np.array(rows)

    print(f"{args.model}, GPL-3, next {args.next} tokens, 2 threads")
    print("| tokens | flash attention | raw C restore: max abs logit difference | window cells in their slots |")
    print("|---|---|---|---|")
    for n in map(int, args.tokens.split(",")):
        for flash_attn in (True, False):
            def make():
                return Llama(model_path=path, n_ctx=n + args.next + 16, n_threads=2, verbose=False,
                             flash_attn=flash_attn)
            original = make()
            tokens = original.tokenize(read_text()[0].encode())[:n + args.next]
            original.eval(tokens[:n])
            blob = bytes(read_seq_state(original.ctx))
            expected = logits(original, tokens[n:])
            found = []
            for restore in (lambda llm: blob, lambda llm: window_slots(blob, llm)):
                fresh = make()
                write_seq_state(fresh.ctx, restore(fresh))
                fresh.n_tokens, fresh.input_ids[:n] = n, tokens[:n]
                found.append(float(np.abs(logits(fresh, tokens[n:]) - expected).max()))
            print(f"| {n:,} | {'on' if flash_attn else 'off'} | {found[0]:.4g} | {found[1]:.4g} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
