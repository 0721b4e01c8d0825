"""Lossy KV sessions on the tiny model: smaller files, restored into the context's own cache type."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from seqkv_edge import Llama, ModelMismatchError, SeqKV
from seqkv_edge.container.session_file import read_container
from seqkv_edge.state.blob import parse_seq_state, read_seq_state

PROMPT = b"The lossy tier keeps what matters and drops the noise. " * 4
F16, Q8_0, Q4_0 = 1, 8, 2


def make(path, cfg, type_kv=F16, flash_attn=False):
    return Llama(model_path=path, n_ctx=512, n_batch=64, verbose=False, type_k=type_kv, type_v=type_kv,
                 flash_attn=flash_attn, kv_compressor=cfg)


@pytest.mark.parametrize("type_kv,flash_attn", [(F16, False), (F16, True), (Q8_0, True), (Q4_0, True)])
def test_lossy_session_restores_and_continues(tiny_model_path, tmp_path, type_kv, flash_attn):
    llm = make(tiny_model_path, SeqKV(kv="lossless"), type_kv, flash_attn)
    llm.eval(llm.tokenize(PROMPT))
    lossless = llm.save_session(tmp_path / "exact.seqkv")
    llm.kv_compressor = SeqKV(kv="lossy", bits=4.0)
    lossy = llm.save_session(tmp_path / "lossy.seqkv")
    assert lossy.file_bytes < lossless.file_bytes
    assert read_container(tmp_path / "lossy.seqkv").meta["codecs"]["kv"]["id"] == "kv_lossy"

    fresh = make(tiny_model_path, SeqKV(), type_kv, flash_attn)
    fresh.load_session(tmp_path / "lossy.seqkv")
    assert fresh.n_tokens == llm.n_tokens
    restored = parse_seq_state(read_seq_state(fresh.ctx), model=fresh)
    original = parse_seq_state(read_seq_state(llm.ctx), model=llm)
    assert [t.data.shape for t in restored.tensors()] == [t.data.shape for t in original.tensors()]
    assert [st.positions.tolist() for st in restored.sections[0].streams] == \
        [st.positions.tolist() for st in original.sections[0].streams]
    more = llm.tokenize(b" More text.", add_bos=False)
    llm.eval(more)
    fresh.eval(more)
    a = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
    b = np.ctypeslib.as_array(fresh._ctx.get_logits(), shape=(fresh.n_vocab(),))
    assert np.all(np.isfinite(b)) and np.corrcoef(a, b)[0, 1] > 0.9


def test_model_profile_session_round_trip(tiny_model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("SEQKV_HOME", str(tmp_path / "home"))
    llm = make(tiny_model_path, SeqKV(kv="lossy", bits=3.0, model_profile=True))
    llm.eval(llm.tokenize(PROMPT))
    llm.save_session(tmp_path / "p.seqkv")
    assert list((tmp_path / "home" / "kv_profiles").glob("*.npz")), "the profile is cached per model"
    fresh = make(tiny_model_path, SeqKV())
    fresh.load_session(tmp_path / "p.seqkv")
    assert fresh.n_tokens == llm.n_tokens


def test_lossy_settings_are_validated():
    with pytest.raises(ValueError, match="bits or max_kl"):
        SeqKV(kv="lossy", bits=2.0, max_kl=0.01)
    with pytest.raises(ValueError, match="apply to kv='lossy'"):
        SeqKV(bits=2.0)
    assert SeqKV(kv="lossy", max_kl=0.02).bits is None
    with pytest.raises(ValueError, match="model_profile"):
        SeqKV(model_profile=True)


def test_a_profiled_session_folder_restores_on_a_machine_without_the_profile(tiny_model_path, tmp_path, monkeypatch):
    """The profile travels beside the session files (one content-addressed copy per folder): another machine,
    with an empty $SEQKV_HOME, restores the folder with only the model, to the same bytes."""
    monkeypatch.setenv("SEQKV_HOME", str(tmp_path / "home"))
    llm = make(tiny_model_path, SeqKV(kv="lossy", bits=3.0, model_profile=True))
    llm.eval(llm.tokenize(PROMPT))
    folder = tmp_path / "sessions"
    folder.mkdir()
    llm.save_session(folder / "a.seqkv")
    llm.save_session(folder / "b.seqkv")
    assert len(list((folder / ".seqkv_profiles").glob("*.npz"))) == 1
    here = make(tiny_model_path, SeqKV())
    here.load_session(folder / "a.seqkv")
    expected = bytes(read_seq_state(here.ctx))

    moved = tmp_path / "elsewhere"
    shutil.copytree(folder, moved)
    monkeypatch.setenv("SEQKV_HOME", str(tmp_path / "other-home"))  # no cached profile there
    there = make(tiny_model_path, SeqKV())
    there.load_session(moved / "b.seqkv")
    assert bytes(read_seq_state(there.ctx)) == expected
    shutil.rmtree(moved / ".seqkv_profiles")
    with pytest.raises(ModelMismatchError, match="KV profile"):
        make(tiny_model_path, SeqKV()).load_session(moved / "b.seqkv")

    # a META whose profile digest is no digest (a path, say) is refused before any file is opened by it
    from seqkv_edge.container.session_file import write_container
    from seqkv_edge.errors import CorruptDataError

    container = read_container(folder / "a.seqkv")
    meta = dict(container.meta, profile="../../" + container.meta["profile"])
    write_container(tmp_path / "crafted.seqkv", meta, [(k, bytes(p)) for k, p in container.sections])
    with pytest.raises(CorruptDataError, match="not a 8-byte hex digest"):
        make(tiny_model_path, SeqKV()).load_session(tmp_path / "crafted.seqkv")
