"""Named sessions in the prefix store (tiny model): bit-exact restore, shared chunks, replay after
eviction, model checks, and the chunk format (split, partial prefixes, full-state conversion)."""
from __future__ import annotations

import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from redis_server import RedisServer, redis_available  # noqa: E402
from tiny_model import write_tiny_gguf  # noqa: E402

from seqkv_edge import Llama, ModelMismatchError, SeqKV  # noqa: E402
from seqkv_edge.container.chunk_format import parse_chunk  # noqa: E402
from seqkv_edge.container.chunks import ChunkCodec, full_to_seq_state, seq_to_full_state  # noqa: E402
from seqkv_edge.sessions.named import (
    delete_named,
    is_session_name,
    list_named,
    load_named,
    open_session_store,
    save_named,
)
from seqkv_edge.state.blob import parse_seq_state, read_seq_state  # noqa: E402

F16, Q8_0 = 1, 8
PROMPT = b"The quick brown fox jumps over the lazy dog. " * 6
LAYOUTS = [(F16, False), (F16, True), (Q8_0, True)]  # (cache type, flash_attn)


def make_llama(path, cache_type=F16, flash_attn=False):
    return Llama(model_path=str(path), n_ctx=512, n_batch=64, verbose=False, type_k=cache_type, type_v=cache_type,
                 flash_attn=flash_attn, n_threads=2, kv_compressor=SeqKV(n_threads=2))


def with_tail(llm, tail: bytes, n_prompt: int | None = None) -> list[int]:
    prompt = llm.tokenize(PROMPT)
    return prompt[:n_prompt] + llm.tokenize(tail, add_bos=False)


def greedy(llm, tokens, n=8) -> list[int]:
    return [t for _, t in zip(range(n), llm.generate(tokens, top_k=1, temp=0.0))]


@pytest.fixture
def store(tmp_path):
    with open_session_store(tmp_path / "store", n_threads=2) as opened:
        yield opened


@pytest.mark.parametrize("cache_type,flash_attn", LAYOUTS)
def test_round_trip_is_bit_exact_and_continues_identically(tiny_model_path, store, cache_type, flash_attn):
    llm = make_llama(tiny_model_path, cache_type, flash_attn)
    tokens = llm.tokenize(PROMPT)
    llm.eval(tokens)
    original = bytes(read_seq_state(llm.ctx))
    saved = save_named(llm, store, "chat")
    assert saved.n_tokens == len(tokens) and saved.kv_stored and saved.new_bytes == store.stats().payload_bytes

    fresh = make_llama(tiny_model_path, cache_type, flash_attn)
    loaded = load_named(fresh, store, "chat")
    assert (loaded.restored_tokens, loaded.replayed_tokens) == (len(tokens), 0)
    assert bytes(read_seq_state(fresh.ctx)) == original
    assert greedy(fresh, tokens) == greedy(llm, tokens)


def test_shared_prefix_is_stored_once_and_both_restore_exactly(tiny_model_path, store):
    first = make_llama(tiny_model_path)
    first.eval(with_tail(first, b" Then it slept."))
    a = bytes(read_seq_state(first.ctx))
    info_a = save_named(first, store, "a")
    second = make_llama(tiny_model_path)
    shared = len(first.tokenize(PROMPT)) - 10
    second.eval(with_tail(second, b" Something else entirely.", shared))
    b = bytes(read_seq_state(second.ctx))
    info_b = save_named(second, store, "b")  # diverges inside a's chunk: the store splits it
    assert info_b.reused_tokens >= shared
    assert info_b.new_bytes < 0.5 * info_a.new_bytes
    assert store.stats().nodes == 3
    for name, blob in (("a", a), ("b", b)):
        fresh = make_llama(tiny_model_path)
        assert load_named(fresh, store, name).replayed_tokens == 0
        assert bytes(read_seq_state(fresh.ctx)) == blob
    store.check()


def test_evicted_snapshots_fall_back_to_replay(tiny_model_path, store):
    llm = make_llama(tiny_model_path)
    tokens = with_tail(llm, b" Then it slept.")
    llm.eval(tokens)
    save_named(llm, store, "a")
    other = make_llama(tiny_model_path)
    n_shared = len(llm.tokenize(PROMPT)) - 10
    other.eval(with_tail(other, b" A different ending.", n_shared))
    save_named(other, store, "b")
    reference = make_llama(tiny_model_path)  # what a replay computes: a batched prefill
    reference.eval(tokens)
    replay_blob = bytes(read_seq_state(reference.ctx))

    # only a's own leaf goes: the shared prefix comes from b's chunks, the tail is replayed
    leaf = int(store.get_session("a").node_ids[-1])
    store._retry(lambda: _plan_drop(store, leaf))
    partial = make_llama(tiny_model_path)
    info = load_named(partial, store, "a")
    assert info.restored_tokens >= n_shared and info.replayed_tokens == len(tokens) - info.restored_tokens > 0
    assert list(partial.input_ids[:partial.n_tokens]) == tokens
    assert greedy(partial, tokens) == greedy(reference, tokens)

    store.evict(0)  # every snapshot gone; the sessions are not
    assert store.stats().payload_bytes == 0
    assert {row["name"] for row in list_named(store)} == {"a", "b"}
    replayed = make_llama(tiny_model_path)
    info = load_named(replayed, store, "a")
    assert (info.restored_tokens, info.replayed_tokens) == (0, len(tokens))
    assert bytes(read_seq_state(replayed.ctx)) == replay_blob

    # saving again brings the snapshot back
    save_named(replayed, store, "a")
    assert load_named(make_llama(tiny_model_path), store, "a").replayed_tokens == 0


def test_store_too_small_keeps_the_tokens_and_replays(tiny_model_path, tmp_path):
    llm = make_llama(tiny_model_path)
    tokens = llm.tokenize(PROMPT)
    llm.eval(tokens)
    with open_session_store(tmp_path / "tiny_store", budget_bytes=1024, n_threads=1) as small:
        saved = save_named(llm, small, "chat")  # the snapshot cannot fit: StoreFullError inside
        assert not saved.kv_stored and small.stats().payload_bytes == 0
        fresh = make_llama(tiny_model_path)
        loaded = load_named(fresh, small, "chat")
    assert (loaded.restored_tokens, loaded.replayed_tokens) == (0, len(tokens))
    assert greedy(fresh, tokens) == greedy(llm, tokens)


def _plan_drop(store, node):
    """A write plan deleting one leaf node and the sessions ending there (what eviction does)."""
    from seqkv_edge.store.records import WritePlan

    plan = WritePlan(store._gen, 0.0)
    plan.deletes[node] = store.node_stats([node])[0].nbytes
    plan.del_sessions.update(*store._sessions_ending_at([node]).values())
    return plan, None


def test_other_model_or_cache_layout_is_refused(tiny_model_path, store, tmp_path):
    llm = make_llama(tiny_model_path)
    llm.eval(llm.tokenize(PROMPT))
    save_named(llm, store, "chat")
    other = make_llama(write_tiny_gguf(tmp_path / "other.gguf", seed=1, n_embd=128))
    other.eval(other.tokenize(b"hello"))
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        load_named(other, store, "chat")
    with pytest.raises(ModelMismatchError, match="one model"):
        save_named(other, store, "mine")
    with pytest.raises(ModelMismatchError, match="flash_attn"):
        load_named(make_llama(tiny_model_path, F16, flash_attn=True), store, "chat")


def test_delete_list_and_names(tiny_model_path, store):
    llm = make_llama(tiny_model_path)
    llm.eval(llm.tokenize(PROMPT))
    save_named(llm, store, "one")
    save_named(llm, store, "two")  # same tokens: no new chunk
    assert store.stats().nodes == 1
    rows = {row["name"]: row for row in list_named(store)}
    assert rows["one"]["kv_tokens"] == rows["one"]["n_tokens"] == llm.n_tokens
    delete_named(store, "one")
    assert [row["name"] for row in list_named(store)] == ["two"]
    with pytest.raises(KeyError):
        load_named(llm, store, "one")
    with pytest.raises(KeyError):
        delete_named(store, "one")
    assert is_session_name("chat-1") and not is_session_name("dir/chat") and not is_session_name("chat.seqkv")
    assert not is_session_name(Path("chat"))


@pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")
def test_redis_store_round_trip_and_replay(tiny_model_path):
    with RedisServer() as server:
        from seqkv_edge.container.chunks import split_payload
        from seqkv_edge.store import RedisStore

        store = RedisStore(server.url, namespace=uuid.uuid4().hex[:8], split_payload=split_payload)
        llm = make_llama(tiny_model_path)
        tokens = llm.tokenize(PROMPT)
        llm.eval(tokens)
        original = bytes(read_seq_state(llm.ctx))
        save_named(llm, store, "chat")
        fresh = make_llama(tiny_model_path)
        assert load_named(fresh, store, "chat").replayed_tokens == 0
        assert bytes(read_seq_state(fresh.ctx)) == original
        store.evict(0)
        fresh = make_llama(tiny_model_path)
        assert load_named(fresh, store, "chat").replayed_tokens == len(tokens)
        assert list_named(store)[0]["kv_tokens"] == 0
        store.close()


def test_chunks_split_and_rebuild_any_prefix(tiny_model_path):
    llm = make_llama(tiny_model_path)
    tokens = np.array(llm.tokenize(PROMPT), np.int32)
    llm.eval(tokens.tolist())
    blob = bytes(read_seq_state(llm.ctx))
    state = parse_seq_state(blob, model=llm)
    codec = ChunkCodec(n_threads=2)
    identity = b"12345678"
    chunks = codec.session_chunks(state, tokens, llm.n_vocab(), identity)
    n = len(tokens)
    whole = chunks.payload(0, n)
    rebuilt, decoded = codec.rebuild([whole], n, identity)
    assert bytes(rebuilt) == blob and np.array_equal(decoded, tokens)

    head, tail = codec.split(whole, 0, 40, n)
    assert (parse_chunk(head).n_tokens, parse_chunk(tail).start) == (40, 40)
    assert bytes(codec.rebuild([head, tail], n, identity)[0]) == blob
    assert head == chunks.payload(0, 40) and tail == chunks.payload(40, n)
    for k in (1, 40, 41, n - 1):  # any prefix, also inside the last chunk
        prefix, prefix_tokens = codec.rebuild([head, tail] if k > 40 else [head], k, identity)
        cut = parse_seq_state(prefix, model=llm)
        assert np.array_equal(prefix_tokens, tokens[:k])
        assert np.array_equal(cut.sections[0].streams[0].positions, np.arange(k))
        for full, part in zip(state.tensors(), cut.tensors()):
            expected = full.data[:k] if full.token_major else full.data[:, : k * full.element_bytes]
            assert np.array_equal(part.data, expected), full.name
    with pytest.raises(ModelMismatchError):
        codec.rebuild([whole], n, b"other id")


def test_full_state_converts_to_and_from_the_sequence_blob(tiny_model_path):
    llm = make_llama(tiny_model_path)
    llm.eval(llm.tokenize(PROMPT))
    full = llm.save_state().llama_state
    arch, seq = full_to_seq_state(full)
    assert arch == b"llama" and seq == bytes(read_seq_state(llm.ctx))
    assert seq_to_full_state(arch, seq) == full
