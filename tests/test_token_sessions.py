"""Tokens-only sessions on the tiny model: portable prefill, hybrid exact replay, model one-token replay."""
from __future__ import annotations

import numpy as np
import pytest

from seqkv_edge import CorruptDataError, Llama, ModelMismatchError, SeqKV
from seqkv_edge.container.session_file import Kind, read_container, write_container
from seqkv_edge.errors import SessionCancelled
from seqkv_edge.state.blob import read_seq_state

PROMPT = b"Once upon a time there was a small model that wanted to remember everything. "


def make(path, **cfg):
    return Llama(model_path=path, n_ctx=512, n_batch=32, verbose=False,
                 kv_compressor=SeqKV(kv="none", n_threads=1, **cfg))


def chat(llm, n_new=10):
    """A prompt prefilled in batches, then greedy generation in one-token steps, then a second turn."""
    prompt = llm.tokenize(PROMPT)
    answer = [t for _, t in zip(range(n_new), llm.generate(prompt, top_k=1, temp=0.0))]
    turn = prompt + answer + llm.tokenize(b" Tell me more.", add_bos=False)
    more = [t for _, t in zip(range(n_new), llm.generate(turn, top_k=1, temp=0.0))]
    return turn + more


def logits(llm):
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()


def test_hybrid_replay_is_bit_identical(tiny_model_path, tmp_path):
    llm = make(tiny_model_path, tokens="hybrid")
    chat(llm)
    info = llm.save_session(tmp_path / "h.seqkv")
    original = bytes(read_seq_state(llm.ctx))
    fresh = make(tiny_model_path, tokens="hybrid")
    restored = fresh.load_session(tmp_path / "h.seqkv")
    assert restored.restored_by == "exact replay" and restored.n_tokens == info.n_tokens
    assert bytes(read_seq_state(fresh.ctx)) == original
    assert np.array_equal(logits(fresh), logits(llm))
    # the restored context records the same schedule, so it saves to the same bytes
    fresh.save_session(tmp_path / "again.seqkv")
    assert (tmp_path / "again.seqkv").read_bytes() == (tmp_path / "h.seqkv").read_bytes()


def test_hybrid_survives_cuts_and_resets(tiny_model_path, tmp_path):
    llm = make(tiny_model_path, tokens="hybrid")
    chat(llm)
    llm.reset()
    history = chat(llm)
    llm.generate(history, top_k=1, temp=0.0).__next__()  # exact prompt: llama-cpp-python re-evaluates the last token
    llm.n_tokens -= 5  # cut back inside the history, as a prefix-matching cache does
    llm.eval(llm.tokenize(b"!", add_bos=False))
    llm.save_session(tmp_path / "c.seqkv")
    fresh = make(tiny_model_path, tokens="hybrid")
    fresh.load_session(tmp_path / "c.seqkv")
    assert bytes(read_seq_state(fresh.ctx)) == bytes(read_seq_state(llm.ctx))
    assert list(fresh.input_ids[: fresh.n_tokens]) == list(llm.input_ids[: llm.n_tokens])


def test_portable_restores_by_prefill_with_same_tokens(tiny_model_path, tmp_path):
    llm = make(tiny_model_path)
    chat(llm)
    llm.save_session(tmp_path / "p.seqkv")
    seen = []
    fresh = make(tiny_model_path)
    info = fresh.load_session(tmp_path / "p.seqkv", progress=lambda done, total: seen.append((done, total)))
    assert info.restored_by == "prefill"
    assert list(fresh.input_ids[: fresh.n_tokens]) == list(llm.input_ids[: llm.n_tokens])
    assert seen[-1] == (llm.n_tokens, llm.n_tokens) and len(seen) > 1


def test_model_tier_round_trip_and_smallest(tiny_model_path, tmp_path):
    llm = make(tiny_model_path, tokens="model")
    chat(llm)
    llm.save_session(tmp_path / "m.seqkv")
    fresh = make(tiny_model_path, tokens="model")
    info = fresh.load_session(tmp_path / "m.seqkv")
    assert info.restored_by == "one-token replay"
    assert list(fresh.input_ids[: fresh.n_tokens]) == list(llm.input_ids[: llm.n_tokens])


def test_cancel_puts_context_back(tiny_model_path, tmp_path):
    llm = make(tiny_model_path)
    chat(llm)
    llm.save_session(tmp_path / "p.seqkv")
    fresh = make(tiny_model_path)
    fresh.eval(fresh.tokenize(b"keep this"))
    before, n_before = bytes(read_seq_state(fresh.ctx)), fresh.n_tokens
    with pytest.raises(SessionCancelled):
        fresh.load_session(tmp_path / "p.seqkv", progress=lambda done, total: done < 10)
    assert bytes(read_seq_state(fresh.ctx)) == before and fresh.n_tokens == n_before


def _rewrite(path, kind, mutate):
    container = read_container(path)
    sections = [(k, mutate(bytes(p)) if k == kind else bytes(p)) for k, p in container.sections]
    header = bytes(container.header)
    del container
    write_container(path, header, sections)


def test_hybrid_desync_is_detected(tiny_model_path, tmp_path):
    llm = make(tiny_model_path, tokens="hybrid")
    chat(llm, n_new=20)
    path = tmp_path / "h.seqkv"
    llm.save_session(path)

    def flip(payload):  # a decoder seeing other logits behaves like a stream with one wrong bit
        data = bytearray(payload)
        data[-3] ^= 0x04
        return bytes(data)

    _rewrite(path, Kind.MODEL_TOKENS, flip)
    with pytest.raises(CorruptDataError):
        make(tiny_model_path, tokens="hybrid").load_session(path)


def test_other_build_needs_fallback(tiny_model_path, tmp_path):
    for fallback in (False, True):
        llm = make(tiny_model_path, tokens="hybrid", portable_fallback=fallback)
        chat(llm)
        path = tmp_path / f"h{fallback}.seqkv"
        llm.save_session(path)
        container = read_container(path)
        header = bytearray(container.header)
        header[17] ^= 0xFF  # another build hash
        sections = [(k, bytes(p)) for k, p in container.sections]
        del container
        write_container(path, bytes(header), sections)
        fresh = make(tiny_model_path, tokens="hybrid")
        if fallback:
            assert fresh.load_session(path).restored_by == "prefill (fallback)"
            assert list(fresh.input_ids[: fresh.n_tokens]) == list(llm.input_ids[: llm.n_tokens])
        else:
            with pytest.raises(ModelMismatchError, match="build"):
                fresh.load_session(path)


def test_hybrid_refuses_after_snapshot_load(tiny_model_path, tmp_path):
    llm = make(tiny_model_path)
    chat(llm)
    llm.save_session(tmp_path / "p.seqkv")
    hybrid = make(tiny_model_path, tokens="hybrid")
    hybrid.load_session(tmp_path / "p.seqkv")  # a prefill replay: recorded, so hybrid can save it
    hybrid.save_session(tmp_path / "h.seqkv")
    hybrid.schedule_recorder.invalidate()
    with pytest.raises(Exception, match="schedule cannot be replayed"):
        hybrid.save_session(tmp_path / "h2.seqkv")


def test_compact_header(tiny_model_path, tmp_path):
    llm = make(tiny_model_path, tokens="model")
    llm.eval(llm.tokenize(PROMPT))
    path = tmp_path / "m.seqkv"
    llm.save_session(path)
    container = read_container(path)
    overhead = path.stat().st_size - len(container.payload(Kind.MODEL_TOKENS))
    assert container.header is not None and overhead <= 64


def test_other_batch_schedule_is_detected(tiny_model_path, tmp_path):
    """Replaying with other batch boundaries gives other logits: the model-coded tokens must not decode."""
    from seqkv_edge.sessions.schedule import Schedule

    llm = make(tiny_model_path, tokens="hybrid")
    chat(llm, n_new=20)
    path = tmp_path / "h.seqkv"
    llm.save_session(path)

    def move_boundary(payload):
        schedule = Schedule.decode(payload)
        assert schedule.sizes[0] > 2
        schedule.sizes[0] -= 1  # the prompt's last token moves into the first one-token step
        schedule.sizes[1] += 1
        return schedule.encode()

    _rewrite(path, Kind.SCHEDULE_RUNS, move_boundary)
    fresh = make(tiny_model_path, tokens="hybrid")
    with pytest.raises(CorruptDataError):
        fresh.load_session(path)
    assert fresh.n_tokens == 0


def test_thread_count_does_not_change_the_replay(tiny_model_path, tmp_path):
    """Measured: logits and KV do not depend on the thread count, so the build hash leaves it out."""
    llm = Llama(model_path=tiny_model_path, n_ctx=512, n_batch=32, n_threads=2, verbose=False,
                kv_compressor=SeqKV(kv="none", tokens="hybrid"))
    chat(llm)
    llm.save_session(tmp_path / "h.seqkv")
    fresh = Llama(model_path=tiny_model_path, n_ctx=512, n_batch=32, n_threads=1, verbose=False,
                  kv_compressor=SeqKV(kv="none", tokens="hybrid"))
    fresh.load_session(tmp_path / "h.seqkv")
    assert bytes(read_seq_state(fresh.ctx)) == bytes(read_seq_state(llm.ctx))
