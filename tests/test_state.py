"""seqkv_edge.state.blob on real llama.cpp blobs of tiny generated models: parse, rebuild byte-exactly, restore."""
from __future__ import annotations

import struct

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")
import tiny_model  # noqa: E402
from llama_cpp import llama_cpp as C  # noqa: E402

from seqkv_edge.errors import (  # noqa: E402
    CorruptDataError,
    ModelMismatchError,
    UnsupportedStateError,
)
from seqkv_edge.state.blob import (
    GGML_TYPES,
    build_seq_state,
    model_arch,
    model_state_options,
    parse_seq_state,
    read_seq_state,
    skeleton_layout,
    write_seq_state,
)

F32, F16 = llama_cpp.GGML_TYPE_F32, llama_cpp.GGML_TYPE_F16
Q8_0, Q4_0 = llama_cpp.GGML_TYPE_Q8_0, llama_cpp.GGML_TYPE_Q4_0
BF16 = getattr(llama_cpp, "GGML_TYPE_BF16", 30)  # the 0.3.36 bindings lack the constant; ggml.h: GGML_TYPE_BF16 = 30
PROMPT = b"The quick brown fox jumps over the lazy dog; a state blob round trip. "


# --- tiny models -------------------------------------------------------------------------------------

def _write_gguf(path, arch, keys: dict, tensors: dict, seed=0):
    """A tiny GGUF with the byte vocabulary of tiny_model; ``tensors`` maps name -> numpy shape or array."""
    rng = np.random.default_rng(seed)
    tokens, scores, types = tiny_model._vocab()
    writer = gguf.GGUFWriter(str(path), arch)
    for method, value in {"add_context_length": 4096, "add_layer_norm_rms_eps": 1e-5, "add_file_type": 0,
                          "add_tokenizer_model": "llama", "add_token_list": tokens, "add_token_scores": scores,
                          "add_token_types": types, "add_bos_token_id": 1, "add_eos_token_id": 2,
                          "add_unk_token_id": 0, "add_add_bos_token": True, **keys}.items():
        getattr(writer, method)(value)
    for name, spec in tensors.items():
        data = spec if isinstance(spec, np.ndarray) else rng.standard_normal(spec) * (1.0 if "embd" in name else 0.2)
        writer.add_tensor(name, np.asarray(data, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def _attn_model(path, arch, n_embd=64, n_head=2, n_head_kv=1, n_ff=128, n_layer=2, extra_keys=(), post_norms=False):
    hd, ones = n_embd // n_head, np.ones(n_embd)
    keys = {"add_embedding_length": n_embd, "add_block_count": n_layer, "add_feed_forward_length": n_ff,
            "add_head_count": n_head, "add_head_count_kv": n_head_kv, "add_rope_dimension_count": hd,
            "add_rope_freq_base": 10000.0, **dict(extra_keys)}
    tensors = {"token_embd.weight": (259, n_embd), "output_norm.weight": ones}
    for i in range(n_layer):
        norms = ("attn_norm", "ffn_norm") + (("post_attention_norm", "post_ffw_norm") if post_norms else ())
        tensors.update({f"blk.{i}.{n}.weight": ones for n in norms})
        shapes = {"attn_q": (n_head * hd, n_embd), "attn_k": (n_head_kv * hd, n_embd),
                  "attn_v": (n_head_kv * hd, n_embd), "attn_output": (n_embd, n_head * hd),
                  "ffn_gate": (n_ff, n_embd), "ffn_up": (n_ff, n_embd), "ffn_down": (n_embd, n_ff)}
        tensors.update({f"blk.{i}.{name}.weight": shape for name, shape in shapes.items()})
    return _write_gguf(path, arch, keys, tensors)


def _mamba_model(path, n_embd=32, d_state=4, d_conv=4, dt_rank=2, n_layer=2):
    d_inner = 2 * n_embd
    keys = {"add_embedding_length": n_embd, "add_block_count": n_layer, "add_feed_forward_length": 0,
            "add_head_count": 0, "add_head_count_kv": 0, "add_ssm_conv_kernel": d_conv,
            "add_ssm_inner_size": d_inner, "add_ssm_state_size": d_state, "add_ssm_time_step_rank": dt_rank}
    tensors = {"token_embd.weight": (259, n_embd), "output_norm.weight": np.ones(n_embd)}
    for i in range(n_layer):
        shapes = {"attn_norm.weight": np.ones(n_embd), "ssm_in.weight": (2 * d_inner, n_embd),
                  "ssm_conv1d.weight": (d_inner, d_conv), "ssm_conv1d.bias": (d_inner,),
                  "ssm_x.weight": (dt_rank + 2 * d_state, d_inner), "ssm_dt.weight": (d_inner, dt_rank),
                  "ssm_dt.bias": (d_inner,), "ssm_a": -np.ones((d_inner, d_state)), "ssm_d": np.ones(d_inner),
                  "ssm_out.weight": (n_embd, d_inner)}
        tensors.update({f"blk.{i}.{name}": shape for name, shape in shapes.items()})
    return _write_gguf(path, "mamba", keys, tensors)


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Paths of the tiny models: llama (head dim 16), llama32 (head dim 32, for q8_0/q4_0 caches: their
    32-value blocks must divide the head size), gemma2 (iSWA, window 8), qwen2vl (M-RoPE cell ext), mamba."""
    d = tmp_path_factory.mktemp("state_models")
    llama32 = str(tiny_model.write_tiny_gguf(d / "llama32.gguf", n_embd=128))
    return {
        "llama": str(tiny_model.write_tiny_gguf(d / "llama.gguf")),
        "llama32": llama32,
        "gemma2": _attn_model(d / "gemma2.gguf", "gemma2", post_norms=True,
                              extra_keys={"add_sliding_window": 8, "add_key_length": 32, "add_value_length": 32}),
        "qwen2vl": _attn_model(d / "qwen2vl.gguf", "qwen2vl", n_head=4, n_head_kv=2,
                               extra_keys={"add_rope_dimension_sections": [2, 3, 3, 0]}),
        "mamba": _mamba_model(d / "mamba.gguf"),
    }


def _llama(path, **kw):
    return llama_cpp.Llama(path, n_ctx=256, n_batch=64, n_threads=1, verbose=False, **kw)


def _last_logits(llm) -> np.ndarray:
    return np.ctypeslib.as_array(C.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()


@pytest.fixture(scope="session")
def f16_blob(models):
    llm = _llama(models["llama"], type_k=F16, type_v=F16, flash_attn=True)
    llm.eval(llm.tokenize(PROMPT))
    return bytes(read_seq_state(llm.ctx))


# --- round trips on real blobs -----------------------------------------------------------------------

CASES = [  # model, type_k, type_v, flash_attn, sections
    ("llama", F32, F32, False, 1), ("llama", F16, F16, False, 1), ("llama", F16, F16, True, 1),
    ("llama", BF16, BF16, True, 1), ("llama", BF16, BF16, False, 1),
    ("llama32", Q8_0, Q8_0, True, 1), ("llama32", Q4_0, Q4_0, True, 1), ("llama32", Q8_0, F16, False, 1),
    ("gemma2", F16, F16, False, 2), ("gemma2", F16, F16, True, 2), ("qwen2vl", F16, F16, True, 1),
]


@pytest.mark.parametrize("model,type_k,type_v,flash_attn,n_sections", CASES,
                         ids=[f"{m}-{GGML_TYPES[k].name}-{GGML_TYPES[v].name}-fa{int(fa)}" for m, k, v, fa, _ in CASES])
def test_parse_rebuild_restore(models, model, type_k, type_v, flash_attn, n_sections):
    source = _llama(models[model], type_k=type_k, type_v=type_v, flash_attn=flash_attn)
    tokens = source.tokenize(PROMPT)
    source.eval(tokens)
    blob = read_seq_state(source.ctx)
    state = parse_seq_state(blob, model=source)

    assert state.seq_id == 0 and len(state.sections) == n_sections and state.has_cell_ext == (model == "qwen2vl")
    stream = state.sections[0].streams[0]
    assert stream.cell_count == len(tokens) and stream.v_trans == (not flash_attn)
    np.testing.assert_array_equal(stream.positions, np.arange(len(tokens)))
    assert (stream.n_seq_id == 1).all() and (stream.seq_ids == 0).all()
    if state.has_cell_ext:
        np.testing.assert_array_equal(stream.ext["tok"], tokens)
    if n_sections == 2:  # iSWA: the SWA cache keeps only the window (8 cells)
        swa = state.sections[1].streams[0]
        np.testing.assert_array_equal(swa.positions, np.arange(len(tokens) - 8, len(tokens)))
    blob_u8 = np.frombuffer(blob, np.uint8)
    for t in state.tensors():
        assert t.ggml_type.id == (type_k if t.kind == "k" else type_v)
        assert t.transposed == (t.kind == "v" and not flash_attn) and t.token_major != t.transposed
        rows = t.n_channels if t.transposed else t.n_cells
        assert t.data.shape == (rows, t.nbytes // rows) and t.data.dtype == np.uint8
        assert np.shares_memory(t.data, blob_u8)  # a view, not a copy
        assert t.n_channels % t.block_size == 0
    assert [t.offset for t in state.tensors()] == [off for off, _ in state.spans]

    skeleton = state.skeleton()
    assert len(skeleton) + sum(n for _, n in state.spans) == len(blob)
    rebuilt = build_seq_state(skeleton, [np.array(t.data) for t in state.tensors()])
    assert rebuilt == blob and state.build() == blob

    target = _llama(models[model], type_k=type_k, type_v=type_v, flash_attn=flash_attn)
    write_seq_state(target.ctx, rebuilt)
    assert read_seq_state(target.ctx) == blob
    target.n_tokens = len(tokens)
    next_token = tokens[5]
    source.eval([next_token])
    target.eval([next_token])
    np.testing.assert_array_equal(_last_logits(target), _last_logits(source))


def test_layout_figures(models):
    """Channel layout a codec sees: element bytes, block size, channels (llama32: 2 KV heads x 32 dims)."""
    llm = _llama(models["llama32"], type_k=Q8_0, type_v=F16, flash_attn=False)
    tokens = llm.tokenize(b"abc")
    llm.eval(tokens)
    stream = parse_seq_state(read_seq_state(llm), model=llm).sections[0].streams[0]
    k, v, n = stream.k[0], stream.v[1], len(tokens)
    assert (k.name, k.element_bytes, k.block_size, k.n_channels, k.data.shape) == ("kv0.s0.l0.k", 34, 32, 64, (n, 68))
    assert (v.name, v.element_bytes, v.block_size, v.n_channels, v.data.shape) == ("kv0.s0.l1.v", 2, 1, 64, (64, 2 * n))
    assert model_arch(llm) == "llama"
    assert model_state_options(llm) == {"arch": "llama", "memory": "kv", "n_swa": 0, "has_cell_ext": False}


def test_skeleton_layout_and_buffers(models, f16_blob):
    """Decode-in-place path: skeleton_layout gives the blob with writable tensor views to fill."""
    state = parse_seq_state(f16_blob)  # from read-only bytes: read-only views
    assert not state.tensors()[0].data.flags.writeable
    blob, tensors = skeleton_layout(state.skeleton())
    assert [t.name for t in tensors] == [t.name for t in state.tensors()] and blob != f16_blob
    for empty, parsed in zip(tensors, state.tensors()):
        empty.data[...] = parsed.data
    assert blob == f16_blob
    changed = state.build([np.zeros(t.nbytes, np.uint8) if t.name == "kv0.s0.l1.v" else t.data
                           for t in state.tensors()])
    off, n = state.spans[3]
    assert changed[:off] == f16_blob[:off] and changed[off + n:] == f16_blob[off + n:] and not any(changed[off:off + n])

    llm = _llama(models["llama"], type_k=F16, type_v=F16, flash_attn=True)
    llm.eval(llm.tokenize(PROMPT))
    out = bytearray(len(f16_blob) + 100)
    view = read_seq_state(llm.ctx, out=out)
    assert isinstance(view, memoryview) and view == f16_blob and view.obj is out


# --- several streams and shared cells (raw contexts: llama_cpp.Llama does not expose n_seq_max) -------

def _context(llm, *, n_seq_max, kv_unified):
    params = C.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_threads, params.n_threads_batch = 512, 64, 64, 1, 1
    params.n_seq_max, params.kv_unified = n_seq_max, kv_unified
    return llama_cpp._internals.LlamaContext(model=llm._model, params=params, verbose=False)


def _decode(ctx, tokens, seq_id, pos0):
    batch = C.llama_batch_init(len(tokens), 0, 1)
    try:
        for i, tok in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, pos0 + i, 1, i == len(tokens) - 1
            batch.seq_id[i][0] = seq_id
        batch.n_tokens = len(tokens)
        assert C.llama_decode(ctx.ctx, batch) == 0
    finally:
        C.llama_batch_free(batch)


def test_two_streams(models):
    llm = _llama(models["llama"])
    ctx, fresh = _context(llm, n_seq_max=2, kv_unified=False), _context(llm, n_seq_max=2, kv_unified=False)
    try:
        _decode(ctx, list(range(3, 40)), 0, 0)
        _decode(ctx, list(range(50, 60)), 1, 0)
        for seq_id, counts in ((0, [37, 0]), (1, [0, 10]), (-1, [37, 10])):
            blob = read_seq_state(ctx, seq_id)
            state = parse_seq_state(blob)
            assert [st.cell_count for st in state.sections[0].streams] == counts
            assert build_seq_state(state.skeleton(), [t.data for t in state.tensors()]) == blob
        write_seq_state(fresh, blob := read_seq_state(ctx, 1), seq_id=1)
        assert read_seq_state(fresh, 1) == blob
    finally:
        ctx.close()
        fresh.close()


def test_shared_cells_variable_n_seq_id(models):
    """A whole-memory blob (seq_id -1) where cells belong to one or two sequences: the numpy fallback path."""
    llm = _llama(models["llama"])
    ctx = _context(llm, n_seq_max=2, kv_unified=True)
    try:
        _decode(ctx, list(range(3, 40)), 0, 0)
        C.llama_memory_seq_cp(C.llama_get_memory(ctx.ctx), 0, 1, 0, 20)
        _decode(ctx, list(range(50, 60)), 1, 20)
        blob = read_seq_state(ctx, -1)
        stream = parse_seq_state(blob).sections[0].streams[0]
        np.testing.assert_array_equal(np.bincount(stream.n_seq_id), [0, 27, 20])
        assert stream.seq_ids.size == stream.n_seq_id.sum() == 67
        shared = np.repeat(stream.n_seq_id == 2, stream.n_seq_id)
        np.testing.assert_array_equal(stream.seq_ids[shared], np.tile([0, 1], 20))
        assert parse_seq_state(blob).build() == blob
    finally:
        ctx.close()


# --- refusals --------------------------------------------------------------------------------------------

def _patched(blob: bytes, offset: int, fmt: str, value) -> bytes:
    out = bytearray(blob)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


@pytest.mark.parametrize("cut", [-1, -1000, 30, 9])
def test_truncated(f16_blob, cut):
    with pytest.raises(CorruptDataError, match="truncated"):
        parse_seq_state(f16_blob[:cut])


def test_wrong_magic(f16_blob):
    with pytest.raises(CorruptDataError, match="magic 0x00000000"):
        parse_seq_state(_patched(f16_blob, 0, "<I", 0))


@pytest.mark.parametrize("garbage", [b"\0" * 4, b"\0" * 7, b"\x01\0\0\0\x05\0\0\0" + bytes(range(40))])
def test_trailing_garbage(f16_blob, garbage):
    with pytest.raises(CorruptDataError, match="trailing garbage"):
        parse_seq_state(f16_blob + garbage)


def test_unknown_type_and_bad_sizes(f16_blob):
    k0 = parse_seq_state(f16_blob).tensors()[0]
    with pytest.raises(UnsupportedStateError, match="ggml type 99"):
        parse_seq_state(_patched(f16_blob, k0.offset - 12, "<i", 99), arch="llama")
    with pytest.raises(CorruptDataError, match="row size 63"):
        parse_seq_state(_patched(f16_blob, k0.offset - 8, "<Q", 63))
    with pytest.raises(CorruptDataError, match="claims 2 sequence ids"):
        parse_seq_state(_patched(f16_blob, 8 + 8 + 4, "<I", 2))  # n_seq_id of cell 0


def test_recurrent_and_hybrid_refused(models, f16_blob):
    llm = _llama(models["mamba"])
    llm.eval(llm.tokenize(b"hello"))
    blob = bytes(read_seq_state(llm))
    with pytest.raises(UnsupportedStateError, match="'mamba' keeps a recurrent memory"):
        parse_seq_state(blob, model=llm)
    with pytest.raises(UnsupportedStateError, match=r"'mamba'.*recurrent"):
        parse_seq_state(blob, arch="mamba")
    # hybrid layout (attention KV section, then a recurrent one), synthesized from the two real blobs
    with pytest.raises(UnsupportedStateError, match=r"'jamba'.*recurrent"):
        parse_seq_state(f16_blob + blob[8:], arch="jamba")


def test_build_checks_payloads(f16_blob):
    state = parse_seq_state(f16_blob)
    payloads = [t.data for t in state.tensors()]
    with pytest.raises(ValueError, match="expected 4 tensor payloads"):
        build_seq_state(state.skeleton(), payloads[:3])
    with pytest.raises(CorruptDataError, match="payload 1 has"):
        build_seq_state(state.skeleton(), [payloads[0], payloads[1][:-1]] + payloads[2:])


def test_corrupt_skeleton_and_random_damage(f16_blob):
    state = parse_seq_state(f16_blob)
    with pytest.raises(CorruptDataError, match="expected 99 bytes"):
        skeleton_layout(state.skeleton(), expected_size=99)
    rng = np.random.default_rng(0)
    for _ in range(300):  # damaged headers or metadata: parse or refuse with our errors, never anything else
        damaged = bytearray(f16_blob[:int(rng.integers(len(f16_blob) // 2, len(f16_blob) + 1))])
        damaged[int(rng.integers(0, 300))] = int(rng.integers(0, 256))
        try:
            parse_seq_state(bytes(damaged))
        except (CorruptDataError, UnsupportedStateError):
            pass


def test_restore_into_mismatched_context(models, f16_blob):
    target = _llama(models["llama"], type_k=F32, type_v=F32, flash_attn=True)
    with pytest.raises(ModelMismatchError, match="refused"):
        write_seq_state(target.ctx, f16_blob)
    assert C.llama_memory_seq_pos_max(C.llama_get_memory(target.ctx), 0) == -1  # left empty
