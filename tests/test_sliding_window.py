"""Sliding-window (iSWA) models, on Gemma 3 270M: a session longer than the 512-token window restores and continues
bit-identically (its window's cells back in their cache slots), through a file and through llama.cpp's own C path
with the same layout; the plain C restore does not, which is what the layout fixes."""
from __future__ import annotations

import numpy as np
import pytest
from continuation import next_logits
from known_models import known_model_path

from seqkv_edge import Llama, SeqKV
from seqkv_edge.state.blob import parse_seq_state, read_seq_state, write_seq_state
from seqkv_edge.state.swa import window_slots
from seqkv_edge.textdata import read_text

pytestmark = pytest.mark.real_model
N_TOKENS, N_NEXT = 700, 12  # past the 512-token window


@pytest.fixture(scope="module")
def gemma_path():
    return known_model_path("gemma3-270m")


def make(path, flash_attn):
    return Llama(model_path=path, n_ctx=1024, n_threads=2, verbose=False, flash_attn=flash_attn,
                 kv_compressor=SeqKV())


@pytest.mark.parametrize("flash_attn", [False, True])
def test_a_restored_session_past_the_window_continues_bit_identically(gemma_path, tmp_path, flash_attn):
    original = make(gemma_path, flash_attn)
    tokens = original.tokenize(read_text()[0].encode())[:N_TOKENS + N_NEXT]
    original.eval(tokens[:N_TOKENS])
    blob = bytes(read_seq_state(original.ctx))
    state = parse_seq_state(blob, model=original)
    assert len(state.sections) == 2 and state.sections[1].streams[0].positions[0] == N_TOKENS - 512
    original.save_session(tmp_path / "g.seqkv")
    expected = next_logits(original, tokens[N_TOKENS:])

    restored = make(gemma_path, flash_attn)
    info = restored.load_session(tmp_path / "g.seqkv")
    assert info.restored_by == "snapshot" and restored.n_tokens == N_TOKENS
    assert np.array_equal(next_logits(restored, tokens[N_TOKENS:]), expected)

    padded = make(gemma_path, flash_attn)  # llama.cpp's own restore, given the window in its slots
    write_seq_state(padded.ctx, window_slots(blob, padded))
    padded.n_tokens, padded.input_ids[:N_TOKENS] = N_TOKENS, tokens[:N_TOKENS]
    assert np.array_equal(next_logits(padded, tokens[N_TOKENS:]), expected)


def test_the_plain_c_restore_differs_past_the_window(gemma_path):
    """The finding the slot layout fixes (llama.cpp #25295): if this starts to pass unpadded, upstream fixed it."""
    original = make(gemma_path, True)
    tokens = original.tokenize(read_text()[0].encode())[:N_TOKENS + N_NEXT]
    original.eval(tokens[:N_TOKENS])
    blob = bytes(read_seq_state(original.ctx))
    expected = next_logits(original, tokens[N_TOKENS:])
    plain = make(gemma_path, True)
    write_seq_state(plain.ctx, blob)
    plain.n_tokens, plain.input_ids[:N_TOKENS] = N_TOKENS, tokens[:N_TOKENS]
    assert not np.array_equal(next_logits(plain, tokens[N_TOKENS:]), expected)


def test_named_sessions_in_the_store_restore_bit_identically(gemma_path, tmp_path):
    def make_stored():
        return Llama(model_path=gemma_path, n_ctx=1024, n_threads=2, verbose=False, flash_attn=True,
                     kv_compressor=SeqKV(store=str(tmp_path / "store")))

    original = make_stored()
    tokens = original.tokenize(read_text()[0].encode())[:N_TOKENS + N_NEXT]
    original.eval(tokens[:N_TOKENS])
    saved = original.save_session("long")
    assert saved.where == "store" and saved.kv_stored
    expected = next_logits(original, tokens[N_TOKENS:])
    restored = make_stored()
    info = restored.load_session("long")
    assert (info.restored_tokens, info.replayed_tokens) == (N_TOKENS, 0)
    assert np.array_equal(next_logits(restored, tokens[N_TOKENS:]), expected)


def test_the_completion_cache_serves_many_turns_across_a_restart(gemma_path, tmp_path):
    def turns(llm, document):
        answers = []
        for question in ("\n\nQ: What is this text?\nA:", "\n\nQ: Who wrote it?\nA:", "\n\nQ: What for?\nA:"):
            document += question
            answers.append(llm.create_completion(document, max_tokens=8, temperature=0.0)["choices"][0]["text"])
            document += answers[-1]
        return answers

    def make_cached():
        return Llama(model_path=gemma_path, n_ctx=1024, n_threads=2, verbose=False, flash_attn=True,
                     kv_compressor=SeqKV(store=str(tmp_path / "cache")))

    first = make_cached()
    document = first.detokenize(first.tokenize(read_text()[0].encode())[:600]).decode(errors="ignore")
    answers = turns(first, document)
    assert first.cache.counters.stores == 3
    again = make_cached()  # a restart: the same conversation, served from the store
    assert turns(again, document) == answers
    assert again.cache.counters.already_stored == 3
