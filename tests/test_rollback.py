"""One rollback rule for every restore path: when a restore fails or is cancelled, the live context (its cells and
its tokens) is exactly as before — snapshot files, token files replayed (a failed replay included) and store names
(a failed prefill of the part the store does not hold included)."""
from __future__ import annotations

import pytest

from seqkv_edge import CorruptDataError, Llama, SeqKV, SessionCancelled
from seqkv_edge.container.session_file import Kind, read_container, write_container
from seqkv_edge.state.blob import read_seq_state

TEXT = b"The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. " * 3


def make(path, **settings):
    return Llama(model_path=path, n_ctx=512, n_batch=64, n_threads=2, verbose=False, kv_compressor=SeqKV(**settings))


def live(llm):
    return bytes(read_seq_state(llm.ctx)), llm.n_tokens, list(llm.input_ids[:llm.n_tokens])


def busy(path, **settings):
    """A context holding something else: what a failed restore must leave alone."""
    llm = make(path, **settings)
    llm.eval(llm.tokenize(b"Keep this context exactly as it is."))
    return llm


def damage(path, kind):
    container = read_container(path)
    sections = [(k, bytes(p)[:-7] + b"\x55" * 7 if k == kind else bytes(p)) for k, p in container.sections]
    header = bytes(container.header) if container.header is not None else container.meta
    del container
    write_container(path, header, sections)


def test_a_damaged_snapshot_leaves_the_context_as_it_was(tiny_model_path, tmp_path):
    saver = make(tiny_model_path)
    saver.eval(saver.tokenize(TEXT))
    saver.save_session(tmp_path / "s.seqkv")
    damage(tmp_path / "s.seqkv", Kind.KV)
    llm = busy(tiny_model_path)
    before = live(llm)
    with pytest.raises(CorruptDataError):
        llm.load_session(tmp_path / "s.seqkv")
    assert live(llm) == before


@pytest.mark.parametrize("failure", ["cancelled", "damaged"])
def test_a_failed_token_replay_leaves_the_context_as_it_was(tiny_model_path, tmp_path, failure):
    saver = make(tiny_model_path, kv="none", tokens="model")
    saver.eval(saver.tokenize(TEXT))
    saver.save_session(tmp_path / "t.seqkv")
    if failure == "damaged":  # the replay desynchronises part way through
        damage(tmp_path / "t.seqkv", Kind.MODEL_TOKENS)
    llm = busy(tiny_model_path, kv="none", tokens="model")
    before = live(llm)
    with pytest.raises(SessionCancelled if failure == "cancelled" else CorruptDataError):
        llm.load_session(tmp_path / "t.seqkv", progress=(lambda done, total: done < 20) if failure == "cancelled"
                         else None)
    assert live(llm) == before


def test_a_failed_store_restore_leaves_the_context_as_it_was(tiny_model_path, tmp_path):
    store = str(tmp_path / "store")
    saver = make(tiny_model_path, store=store)
    saver.eval(saver.tokenize(TEXT))
    saver.save_session("chat")
    saver.session_store.evict(0)  # snapshots evicted: a restore must recompute every token
    llm = busy(tiny_model_path, store=store)
    before = live(llm)
    with pytest.raises(SessionCancelled):
        llm.load_session("chat", progress=lambda done, total: done < 10)
    assert live(llm) == before
