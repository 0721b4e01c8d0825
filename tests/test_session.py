"""Save/restore sessions on the tiny generated model: bit-exact state, exact continuation, clear errors."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from tiny_model import write_tiny_gguf

from seqkv_edge import CorruptDataError, Llama, ModelMismatchError, SeqKV
from seqkv_edge.container.session_file import read_container
from seqkv_edge.state.blob import read_seq_state

F32, F16, Q4_0, Q8_0, BF16 = 0, 1, 2, 8, 30
PROMPT = b"The quick brown fox jumps over the lazy dog. " * 6
MORE = b" And then it ran away."
LAYOUTS = [  # (type_k, type_v, flash_attn)
    (F16, F16, False), (F16, F16, True), (F32, F32, False), (BF16, BF16, True),
    (Q8_0, Q8_0, True), (Q4_0, Q4_0, True), (Q8_0, F16, False),
]


def make_llama(path, type_k=F16, type_v=F16, flash_attn=False, n_ctx=512, **kw):
    return Llama(model_path=path, n_ctx=n_ctx, n_batch=64, verbose=False, type_k=type_k, type_v=type_v,
                 flash_attn=flash_attn, kv_compressor=SeqKV(n_threads=2), **kw)


def last_logits(llm) -> np.ndarray:
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()


@pytest.mark.parametrize("type_k,type_v,flash_attn", LAYOUTS)
def test_round_trip_is_bit_exact_and_continues_identically(tiny_model_path, tmp_path, type_k, type_v, flash_attn):
    llm = make_llama(tiny_model_path, type_k, type_v, flash_attn)
    llm.eval(llm.tokenize(PROMPT))
    original = bytes(read_seq_state(llm.ctx))
    info = llm.save_session(tmp_path / "s.seqkv")
    assert info.n_tokens == llm.n_tokens and info.raw_bytes == len(original)
    assert info.file_bytes == (tmp_path / "s.seqkv").stat().st_size

    fresh = make_llama(tiny_model_path, type_k, type_v, flash_attn)
    restored = fresh.load_session(tmp_path / "s.seqkv")
    assert restored.n_tokens == llm.n_tokens == fresh.n_tokens
    assert bytes(read_seq_state(fresh.ctx)) == original
    assert list(fresh.input_ids[: fresh.n_tokens]) == list(llm.input_ids[: llm.n_tokens])

    more = llm.tokenize(MORE, add_bos=False)
    llm.eval(more)
    fresh.eval(more)
    assert np.array_equal(last_logits(llm), last_logits(fresh))
    assert bytes(read_seq_state(fresh.ctx)) == bytes(read_seq_state(llm.ctx))


def test_generation_after_restore_matches_uninterrupted(tiny_model_path, tmp_path):
    llm = make_llama(tiny_model_path)
    prompt = llm.tokenize(PROMPT)
    first = [t for _, t in zip(range(12), llm.generate(prompt, top_k=1, temp=0.0))]
    llm.save_session(tmp_path / "g.seqkv")
    history = prompt + first
    uninterrupted = [t for _, t in zip(range(12), llm.generate(history, top_k=1, temp=0.0))]

    fresh = make_llama(tiny_model_path)
    fresh.load_session(tmp_path / "g.seqkv")
    resumed = [t for _, t in zip(range(12), fresh.generate(history, top_k=1, temp=0.0))]
    assert resumed == uninterrupted


def test_other_model_is_refused_and_context_left_untouched(tiny_model_path, tmp_path):
    llm = make_llama(tiny_model_path)
    llm.eval(llm.tokenize(PROMPT))
    llm.save_session(tmp_path / "s.seqkv")
    other_path = write_tiny_gguf(tmp_path / "other.gguf", seed=1)
    other = make_llama(str(other_path))
    other.eval(other.tokenize(b"something else"))
    before, n_before = bytes(read_seq_state(other.ctx)), other.n_tokens
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        other.load_session(tmp_path / "s.seqkv")
    assert bytes(read_seq_state(other.ctx)) == before and other.n_tokens == n_before


@pytest.mark.parametrize("kw", [dict(type_k=Q8_0, type_v=Q8_0, flash_attn=True), dict(flash_attn=True)])
def test_other_cache_layout_is_refused(tiny_model_path, tmp_path, kw):
    llm = make_llama(tiny_model_path)
    llm.eval(llm.tokenize(PROMPT))
    llm.save_session(tmp_path / "s.seqkv")
    other = make_llama(tiny_model_path, **kw)
    other.eval(other.tokenize(b"keep me"))
    before = bytes(read_seq_state(other.ctx))
    with pytest.raises(ModelMismatchError, match="type_k/type_v and flash_attn"):
        other.load_session(tmp_path / "s.seqkv")
    assert bytes(read_seq_state(other.ctx)) == before


def test_too_small_context_is_refused(tiny_model_path, tmp_path):
    llm = make_llama(tiny_model_path)
    llm.eval(llm.tokenize(PROMPT))
    llm.save_session(tmp_path / "s.seqkv")
    small = make_llama(tiny_model_path, n_ctx=64)
    with pytest.raises(ModelMismatchError, match="n_ctx"):
        small.load_session(tmp_path / "s.seqkv")


@pytest.fixture
def saved_file(tiny_model_path, tmp_path):
    llm = make_llama(tiny_model_path)
    llm.eval(llm.tokenize(PROMPT))
    path = tmp_path / "s.seqkv"
    llm.save_session(path)
    return path


@pytest.mark.parametrize("cut", [1, 7, 100, 1000])
def test_truncated_file_is_refused(tiny_model_path, saved_file, cut):
    data = saved_file.read_bytes()
    saved_file.write_bytes(data[: len(data) - cut])
    fresh = make_llama(tiny_model_path)
    with pytest.raises(CorruptDataError):
        fresh.load_session(saved_file)
    assert fresh.n_tokens == 0


def test_flipped_byte_is_refused(tiny_model_path, saved_file):
    data = bytearray(saved_file.read_bytes())
    for position in (len(data) // 3, len(data) // 2, len(data) - 20):
        damaged = bytearray(data)
        damaged[position] ^= 0x10
        saved_file.write_bytes(damaged)
        with pytest.raises(CorruptDataError):
            make_llama(tiny_model_path).load_session(saved_file)


def test_not_a_session_file(tiny_model_path, tmp_path):
    path = tmp_path / "x.seqkv"
    path.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(CorruptDataError, match="not a seqkv session"):
        make_llama(tiny_model_path).load_session(path)
    with pytest.raises(FileNotFoundError):
        make_llama(tiny_model_path).load_session(tmp_path / "missing.seqkv")


def test_failed_write_leaves_previous_file(tiny_model_path, saved_file, monkeypatch):
    before = saved_file.read_bytes()
    llm = make_llama(tiny_model_path)
    llm.eval(llm.tokenize(b"a different session"))

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        llm.save_session(saved_file)
    monkeypatch.undo()
    assert saved_file.read_bytes() == before
    assert [p.name for p in saved_file.parent.iterdir()] == [saved_file.name]


def test_header_records_what_was_saved(saved_file):
    meta = read_container(saved_file).meta
    assert meta["cache"] == {"k_types": ["f16"], "v_types": ["f16"], "v_trans": True}
    assert meta["n_tokens"] > 0 and len(meta["model"]["fingerprint"]) == 32
    assert meta["codecs"]["kv"]["id"] == "kv_lossless"
    assert meta["build"]["llama_cpp_python"] == "0.3.36"


def test_pickle_keeps_compressor(tiny_model_path):
    llm = make_llama(tiny_model_path)
    llm.kv_compressor = SeqKV(n_threads=1)
    clone = pickle.loads(pickle.dumps(llm))
    assert isinstance(clone, Llama) and clone.kv_compressor == SeqKV(n_threads=1)


def test_bad_compressor_argument(tiny_model_path):
    with pytest.raises(TypeError, match="SeqKV"):
        Llama(model_path=tiny_model_path, verbose=False, kv_compressor="lossless")


def test_a_save_failing_while_its_kv_streams_are_written_keeps_the_old_file(tiny_model_path, tmp_path, monkeypatch):
    """Lossless saves write each KV stream as soon as it is coded: a failure half way leaves the previous file
    whole and no temporary file behind."""
    from seqkv_edge.codecs.kv_lossless import KVLosslessCodec

    llm = make_llama(tiny_model_path)
    llm.eval(llm.tokenize(PROMPT))
    target = tmp_path / "s.seqkv"
    llm.save_session(target)
    before = target.read_bytes()
    llm.eval(llm.tokenize(MORE, add_bos=False))
    real, calls = KVLosslessCodec.encode_tensor, []

    def failing(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk gone")
        return real(self, *args)

    monkeypatch.setattr(KVLosslessCodec, "encode_tensor", failing)
    with pytest.raises(OSError, match="disk gone"):
        llm.save_session(target)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["s.seqkv"]
    monkeypatch.undo()
    fresh = make_llama(tiny_model_path)
    assert fresh.load_session(target).n_tokens == len(llm.tokenize(PROMPT))


def test_token_ids_beyond_the_models_vocabulary_are_refused(tiny_model_path, tmp_path):
    """A file whose checksums hold but whose tokens (and their codec's vocabulary) were forged past the model's
    vocabulary is refused before the context takes them; the context stays as it was."""
    from seqkv_edge.codecs.tokens_zstd import TokensZstdCodec
    from seqkv_edge.container.session_file import Kind, write_container

    llm = make_llama(tiny_model_path)
    llm.eval(llm.tokenize(PROMPT))
    llm.save_session(tmp_path / "s.seqkv")
    container = read_container(tmp_path / "s.seqkv")
    tokens = TokensZstdCodec(n_vocab=llm.n_vocab()).decode(container.payload(Kind.TOKENS))
    forged = TokensZstdCodec(n_vocab=llm.n_vocab() + 10)
    tokens[3] = llm.n_vocab() + 5
    meta = dict(container.meta, codecs=dict(container.meta["codecs"], tokens=forged.get_config()))
    sections = [(k, forged.encode(tokens) if k == Kind.TOKENS else bytes(p)) for k, p in container.sections]
    write_container(tmp_path / "forged.seqkv", meta, sections)
    before = bytes(read_seq_state(llm.ctx))
    with pytest.raises(CorruptDataError, match="vocabulary"):
        llm.load_session(tmp_path / "forged.seqkv")
    assert bytes(read_seq_state(llm.ctx)) == before


def test_a_restore_failing_while_it_writes_the_state_in_puts_the_context_back(tiny_model_path, tmp_path, monkeypatch):
    """The file decodes whole before the context is touched; if writing it in fails half way (llama.cpp refusing
    it, an interrupt), the live session's cells and tokens come back exactly."""
    import seqkv_edge.sessions.snapshot as snapshot

    other = make_llama(tiny_model_path)
    other.eval(other.tokenize(b"Another session entirely, shorter."))
    other.save_session(tmp_path / "other.seqkv")
    llm = make_llama(tiny_model_path)
    llm.eval(llm.tokenize(PROMPT))
    before, tokens = bytes(read_seq_state(llm.ctx)), list(llm.input_ids[:llm.n_tokens])
    real = snapshot.write_state

    def half_written(target, blob):
        real(target, blob)  # the new state is in the context ...
        raise KeyboardInterrupt  # ... when the restore is cancelled

    monkeypatch.setattr(snapshot, "write_state", half_written)
    with pytest.raises(KeyboardInterrupt):
        llm.load_session(tmp_path / "other.seqkv")
    monkeypatch.undo()
    assert bytes(read_seq_state(llm.ctx)) == before and list(llm.input_ids[:llm.n_tokens]) == tokens
