"""Integration on the default model (Qwen2.5-Coder-0.5B): restored sessions continue exactly."""
from __future__ import annotations

import numpy as np
import pytest

from seqkv_edge import Llama, SeqKV
from seqkv_edge.state.blob import read_seq_state
from seqkv_edge.textdata import read_text

pytestmark = pytest.mark.real_model
N_CTX = 2048


def make(path, n_threads=2, **cfg):
    return Llama(model_path=path, n_ctx=N_CTX, n_threads=n_threads, verbose=False, kv_compressor=SeqKV(**cfg))


def greedy(llm, history, n):
    return [t for _, t in zip(range(n), llm.generate(history, top_k=1, temp=0.0, repeat_penalty=1.0))]


def logits(llm):
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()


@pytest.fixture(scope="module")
def chat(real_model_path):
    """A ChatML prompt with ~400 tokens of the GPL-3, prefilled in a batch, then 12 generated tokens."""
    llm = make(real_model_path, kv="none", tokens="hybrid")
    text, _ = read_text()
    body = llm.tokenize(text.encode(), add_bos=False)[:400]
    prompt = (llm.tokenize(b"<|im_start|>user\n", special=True) + body
              + llm.tokenize(b"\nSummarise this.<|im_end|>\n<|im_start|>assistant\n", special=True, add_bos=False))
    answer = greedy(llm, prompt, 12)
    return llm, prompt + answer


@pytest.mark.parametrize("flash_attn", [False, True])
def test_snapshot_restore_continues_bit_identically(real_model_path, tmp_path, flash_attn):
    llm = Llama(model_path=real_model_path, n_ctx=N_CTX, verbose=False, flash_attn=flash_attn)
    text, _ = read_text()
    prompt = llm.tokenize(text.encode())[:300]
    llm.eval(prompt)
    history = prompt + greedy(llm, prompt, 8)
    original = bytes(read_seq_state(llm.ctx))
    info = llm.save_session(tmp_path / "chat.seqkv")
    assert info.ratio > 1.0

    fresh = Llama(model_path=real_model_path, n_ctx=N_CTX, verbose=False, flash_attn=flash_attn)
    fresh.load_session(tmp_path / "chat.seqkv")
    assert bytes(read_seq_state(fresh.ctx)) == original
    assert greedy(fresh, history, 12) == greedy(llm, history, 12)
    more = llm.tokenize(b" Thank you.", add_bos=False)
    llm.eval(more)
    fresh.eval(more)
    assert np.array_equal(logits(fresh), logits(llm))


def test_hybrid_tokens_replay_bit_identically(chat, real_model_path, tmp_path):
    llm, history = chat
    llm.save_session(tmp_path / "h.seqkv")
    fresh = make(real_model_path, n_threads=1, tokens="hybrid", kv="none")  # the thread count does not matter
    info = fresh.load_session(tmp_path / "h.seqkv")
    assert info.restored_by == "exact replay"
    assert bytes(read_seq_state(fresh.ctx)) == bytes(read_seq_state(llm.ctx))
    assert greedy(fresh, history, 8) == greedy(llm, history, 8)


def test_model_tokens_round_trip(real_model_path, tmp_path):
    llm = make(real_model_path, kv="none", tokens="model")
    text, _ = read_text()
    tokens = llm.tokenize(text.encode())[:80]
    llm.eval(tokens)
    info = llm.save_session(tmp_path / "m.seqkv")
    assert info.file_bytes < 80 * 2  # ~2-4 bits per token of English plus a few dozen header bytes
    fresh = make(real_model_path, kv="none", tokens="model")
    assert fresh.load_session(tmp_path / "m.seqkv").restored_by == "one-token replay"
    assert list(fresh.input_ids[: fresh.n_tokens]) == tokens


def test_default_model_ships_its_lossy_step_weights(real_model_path, tmp_path, monkeypatch):
    """Found by the model's fingerprint without any calibration here; finer steps where it measured sensitive."""
    from seqkv_edge.calibrate.weights import load_weights
    from seqkv_edge.fingerprint import model_fingerprint

    monkeypatch.setenv("SEQKV_HOME", str(tmp_path))  # nothing calibrated: the shipped file
    weights = load_weights(model_fingerprint(real_model_path))
    assert weights is not None and len(weights["k"]) == len(weights["v"]) == 24
    flat = np.array([w for ws in weights["k"] + weights["v"] for w in ws])
    assert flat.size == 2 * 24 * 2 and np.isclose(np.log(flat).mean(), 0, atol=1e-3)  # 2 KV heads per layer
    assert flat.min() < 0.5 < 2.0 < flat.max()  # the spread the probes found, not uniform steps
