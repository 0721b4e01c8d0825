"""The store on the default model: llama-cpp-python's create_completion with SeqKVCache restores a
shared long prompt from the store, and a named session round-trips bit-exactly."""
from __future__ import annotations

import pytest

from seqkv_edge.cache import SeqKVCache
from seqkv_edge.hardware import load_plain_llama
from seqkv_edge.sessions.named import load_named, open_session_store, save_named
from seqkv_edge.state.blob import read_seq_state
from seqkv_edge.textdata import read_text

pytestmark = pytest.mark.real_model


def make_llama(path, cls=load_plain_llama):
    return cls(model_path=path, n_ctx=2048, n_threads=2, verbose=False, seed=3)


def test_create_completion_restores_the_shared_prompt_from_the_store(real_model_path, tmp_path):
    text, _ = read_text()
    store = open_session_store(tmp_path / "store")
    first = make_llama(real_model_path)
    document = first.detokenize(first.tokenize(text.encode())[:600]).decode(errors="ignore")
    first.set_cache(SeqKVCache(store, first))
    answer = first.create_completion(document + "\n\nSummary:", max_tokens=8, temperature=0.0)
    assert store.stats().sessions == 1
    first_bytes = store.stats().payload_bytes

    second = make_llama(real_model_path)  # another process / a restart: an empty context
    cache = SeqKVCache(store, second)
    second.set_cache(cache)
    again = second.create_completion(document + "\n\nSummary:", max_tokens=8, temperature=0.0)
    assert cache.counters.hits == 1 and cache.counters.hit_tokens >= 600
    assert again["choices"][0]["text"] == answer["choices"][0]["text"]

    other = second.create_completion(document + "\n\nTitle:", max_tokens=4, temperature=0.0)
    assert other["choices"][0]["text"]
    assert store.stats().sessions == 2  # the second turn shares the document's chunks
    assert store.stats().payload_bytes < 1.2 * first_bytes


def test_named_session_round_trip(real_model_path, tmp_path):
    from seqkv_edge import Llama

    text, _ = read_text()
    store = open_session_store(tmp_path / "store")
    llm = make_llama(real_model_path, Llama)
    llm.eval(llm.tokenize(text.encode())[:400])
    original = bytes(read_seq_state(llm.ctx))
    info = save_named(llm, store, "chat")
    assert info.new_bytes < info.raw_bytes
    fresh = make_llama(real_model_path, Llama)
    assert load_named(fresh, store, "chat").replayed_tokens == 0
    assert bytes(read_seq_state(fresh.ctx)) == original
