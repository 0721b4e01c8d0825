"""Every tier on every known model (Qwen2.5-Coder-0.5B: qwen2; SmolLM2-135M: llama; Gemma 3 270M: gemma3 with
sliding-window layers): restored sessions continue exactly as the uninterrupted ones."""
from __future__ import annotations

import numpy as np
import pytest
from continuation import next_logits
from known_models import known_model_path

from seqkv_edge import Llama, SeqKV
from seqkv_edge.models import KNOWN_MODELS
from seqkv_edge.state.blob import read_seq_state
from seqkv_edge.textdata import read_text

pytestmark = pytest.mark.real_model
N_PROMPT, N_NEXT = 300, 6


@pytest.fixture(scope="module", params=sorted(KNOWN_MODELS))
def model(request):
    return known_model_path(request.param)


def make(path, **settings):
    return Llama(model_path=path, n_ctx=1024, n_threads=2, verbose=False, flash_attn=True,
                 kv_compressor=SeqKV(**settings))


def prompt(llm):
    return llm.tokenize(read_text()[0].encode())[:N_PROMPT]


@pytest.mark.parametrize("settings", [{}, {"store": "store"}], ids=["file", "store"])
def test_lossless_sessions_continue_bit_identically(model, tmp_path, settings):
    settings = {k: str(tmp_path / v) for k, v in settings.items()}
    target = "session" if settings else tmp_path / "s.seqkv"
    llm = make(model, **settings)
    tokens = prompt(llm)
    llm.eval(tokens[:-N_NEXT])
    saved = bytes(read_seq_state(llm.ctx))
    llm.save_session(target)
    expected = next_logits(llm, tokens[-N_NEXT:])
    fresh = make(model, **settings)
    fresh.load_session(target)
    assert bytes(read_seq_state(fresh.ctx)) == saved
    assert np.array_equal(next_logits(fresh, tokens[-N_NEXT:]), expected)


def test_hybrid_token_sessions_replay_bit_identically(model, tmp_path):
    llm = make(model, kv="none", tokens="hybrid")
    tokens = prompt(llm)
    llm.eval(tokens)  # one batch, then generated tokens one at a time
    list(zip(range(N_NEXT), llm.generate(tokens, top_k=1, temp=0.0, repeat_penalty=1.0)))
    llm.save_session(tmp_path / "h.seqkv")
    fresh = make(model, kv="none", tokens="hybrid")
    assert fresh.load_session(tmp_path / "h.seqkv").restored_by == "exact replay"
    assert bytes(read_seq_state(fresh.ctx)) == bytes(read_seq_state(llm.ctx))


def test_lossy_sessions_restore_and_continue(model, tmp_path):
    llm = make(model, kv="lossy", bits=2.0)
    tokens = prompt(llm)
    llm.eval(tokens)
    info = llm.save_session(tmp_path / "l.seqkv")
    assert 7.0 < info.ratio < 9.0  # 2 bits per 16-bit value, side information included
    fresh = make(model, kv="lossy", bits=2.0)
    fresh.load_session(tmp_path / "l.seqkv")
    assert fresh.n_tokens == len(tokens)
    rows = next_logits(fresh, llm.tokenize(b" The end.", add_bos=False))
    assert np.isfinite(rows).all()


def test_calibrate_measures_both_kv_sections_of_a_sliding_window_model(tmp_path):
    """``seqkv calibrate`` on Gemma 3 (two KV sections): one step weight per layer depth over both sections."""
    import json

    from seqkv_edge.cli import main
    from seqkv_edge.textdata import BUNDLED

    path = known_model_path("gemma3-270m")
    out = tmp_path / "weights.json"
    assert main(["calibrate", "--model", path, "--texts", str(BUNDLED / "GFDL-1.3"), "--n-context", "600",
                 "--n-eval", "16", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    n_layer = Llama(model_path=path, vocab_only=True, verbose=False).metadata["gemma3.block_count"]
    assert [len(doc["weights"][k]) for k in "kv"] == [int(n_layer)] * 2
    flat = [w for ws in doc["weights"]["k"] + doc["weights"]["v"] for w in ws]
    assert all(w > 0 for w in flat) and len(set(flat)) > 1  # measured, not uniform
    assert len(doc["sensitivity"]) == 2 * int(n_layer)  # one KV head per layer
