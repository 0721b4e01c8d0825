"""SeqKVCache as llama-cpp-python's prompt cache (tiny model): hits restore stored prefixes,
lookups do not pop, shared prefixes are stored once, Redis works too."""
from __future__ import annotations

import sys
import uuid
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from redis_server import RedisServer, redis_available  # noqa: E402

from seqkv_edge.cache import SeqKVCache  # noqa: E402
from seqkv_edge.sessions.named import open_session_store  # noqa: E402
from seqkv_edge.state.blob import read_seq_state  # noqa: E402

PROMPT = "The quick brown fox jumps over the lazy dog. " * 6


def make_llama(path):
    return llama_cpp.Llama(model_path=str(path), n_ctx=512, n_batch=64, n_threads=2, verbose=False, seed=7)


def complete(llm, prompt):
    return llm.create_completion(prompt, max_tokens=6, temperature=0.0)["choices"][0]["text"]


@pytest.fixture
def store(tmp_path):
    with open_session_store(tmp_path / "store", n_threads=2) as opened:
        yield opened


def test_second_client_restores_the_shared_prompt(tiny_model_path, store):
    first = make_llama(tiny_model_path)
    cache = SeqKVCache(store, first)
    first.set_cache(cache)
    text_1 = complete(first, PROMPT + "Q1")
    assert (cache.counters.misses, cache.counters.stores) == (1, 1)
    complete(first, PROMPT + "Q2")  # the live context already holds the prompt: nothing decoded
    assert cache.counters.skipped == 1 and cache.counters.hits == 0

    second = make_llama(tiny_model_path)
    cache2 = SeqKVCache(store, second)
    second.set_cache(cache2)
    assert complete(second, PROMPT + "Q1") == text_1 == complete(make_llama(tiny_model_path), PROMPT + "Q1")
    n_prompt = len(second.tokenize((PROMPT + "Q1").encode()))
    assert cache2.counters.hits == 1 and cache2.counters.hit_tokens >= n_prompt


def test_lookup_returns_longest_prefix_without_popping(tiny_model_path, store):
    llm = make_llama(tiny_model_path)
    tokens = llm.tokenize(PROMPT.encode())
    llm.eval(tokens)
    cache = SeqKVCache(store, llm, skip_if_live=False)
    cache[tokens] = llm.save_state()
    key = tokens + llm.tokenize(b"and more", add_bos=False)
    assert key in cache and tokens[:5] in cache and [0, 0, 0] not in cache
    for _ in range(2):  # not popped
        state = cache[key]
        assert state.n_tokens == len(tokens) and list(state.input_ids[: state.n_tokens]) == tokens
    with pytest.raises(KeyError):
        cache[[2, 2, 2]]

    fresh = make_llama(tiny_model_path)
    fresh.load_state(cache[key])
    assert fresh.n_tokens == len(tokens)
    assert bytes(read_seq_state(fresh.ctx)) == bytes(read_seq_state(llm.ctx))
    prefix = cache[tokens[:20]]  # a prefix inside a stored chunk
    fresh.load_state(prefix)
    assert fresh.n_tokens == 20
    fresh.eval(tokens[20:])
    assert fresh.n_tokens == len(tokens)


def test_dedup_and_cache_size(tiny_model_path, store):
    llm = make_llama(tiny_model_path)
    cache = SeqKVCache(store, llm, skip_if_live=False)
    raw = 0
    for tail in ("one", "two", "three"):
        llm.reset()
        llm.eval(llm.tokenize((PROMPT + tail).encode()))
        state = llm.save_state()
        raw += state.llama_state_size
        cache[list(state.input_ids[: state.n_tokens])] = state
    assert cache.counters.stores == 3 and store.stats().sessions == 3
    assert cache.cache_size == store.stats().payload_bytes < 0.5 * raw
    cache[list(state.input_ids[: state.n_tokens])] = llm.save_state()  # already stored: no-op
    assert cache.counters.already_stored == 1 and store.stats().sessions == 3


def test_capacity_evicts(tiny_model_path, store):
    llm = make_llama(tiny_model_path)
    cache = SeqKVCache(store, llm, capacity_bytes=1, skip_if_live=False)
    llm.eval(llm.tokenize(PROMPT.encode()))
    cache[list(llm.input_ids[: llm.n_tokens])] = llm.save_state()
    assert cache.cache_size <= 1 and store.stats().sessions == 0


@pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")
def test_redis_backed_cache(tiny_model_path):
    from seqkv_edge.container.chunks import split_payload
    from seqkv_edge.store import RedisStore

    with RedisServer() as server:
        store = RedisStore(server.url, namespace=uuid.uuid4().hex[:8], split_payload=split_payload)
        first = make_llama(tiny_model_path)
        first.set_cache(SeqKVCache(store, first))
        text = complete(first, PROMPT + "Q1")
        second = make_llama(tiny_model_path)
        cache = SeqKVCache(store, second)
        second.set_cache(cache)
        assert complete(second, PROMPT + "Q1") == text and cache.counters.hits == 1
        store.close()


def test_seqkv_llama_wires_the_cache(tiny_model_path, tmp_path):
    from seqkv_edge import Llama, SeqKV

    config = SeqKV(n_threads=2, store=str(tmp_path / "wired"))
    llm = Llama(model_path=tiny_model_path, n_ctx=512, n_batch=64, verbose=False, kv_compressor=config)
    assert isinstance(llm.cache, SeqKVCache)
    llm.eval(llm.tokenize(PROMPT.encode()))
    llm.save_session("chat")
    fresh = Llama(model_path=tiny_model_path, n_ctx=512, n_batch=64, verbose=False, kv_compressor=config)
    fresh.load_session("chat")
    assert bytes(read_seq_state(fresh.ctx)) == bytes(read_seq_state(llm.ctx))
    assert np.array_equal(fresh.input_ids[: fresh.n_tokens], llm.input_ids[: llm.n_tokens])
