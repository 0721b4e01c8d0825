"""Every registered codec through one template: it implements its kind in full, its config round-trips through JSON
and freezes the bytes written into files, a small input of its kind round-trips, and its committed fixtures decode
to frozen values. A codec added to the registry must be added to ``EXAMPLES``, ``FROZEN_CONFIGS`` and
``FIXTURE_CHECKS`` here."""
from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
from lossy_fixtures import DIGESTS, NAMES, decode_fixture
from test_tokens_model import (
    QWEN_VOCAB,
    fixture_rows_and_tokens,
    peaked_rows,
    sample_tokens,
)

from seqkv_edge.codecs import (
    BytesCodec,
    ModelTokensCodec,
    StateCodec,
    TokensCodec,
    get_codec,
    registered_codecs,
)
from seqkv_edge.codecs.kv_lossless import KVLosslessCodec
from seqkv_edge.codecs.kv_lossy.codec import KVLossyCodec
from seqkv_edge.codecs.tokens_model import TokensModelCodec
from seqkv_edge.codecs.tokens_portable import TokensPortableCodec
from seqkv_edge.codecs.tokens_zstd import TokensZstdCodec
from seqkv_edge.codecs.zstd_bytes import ZstdCodec
from seqkv_edge.container.session_file import Kind, read_container
from seqkv_edge.errors import CorruptDataError
from seqkv_edge.state.blob import parse_seq_state, read_seq_state, skeleton_layout
from seqkv_edge.state.rope import rope_params
from seqkv_edge.state.values import tensor_values

FIXTURES = Path(__file__).parent / "fixtures"
KINDS = (BytesCodec, TokensCodec, ModelTokensCodec, StateCodec)
SESSION_FILES = [(v, name) for v in (1, 2) for name in ("snapshot_f16", "snapshot_q8_0")]

EXAMPLES = {  # codec id: codecs to run, the defaults first
    "kv_lossless": [KVLosslessCodec(), KVLosslessCodec(pair_offset=0, n_threads=1)],
    "kv_lossy": [KVLossyCodec(bits=4.0), KVLossyCodec(max_kl=0.01, version=3)],
    "tokens_model": [TokensModelCodec(), TokensModelCodec(n_vocab=1000, checkpoint_tokens=8, check_bits=32)],
    "tokens_portable": [TokensPortableCodec(), TokensPortableCodec(n_vocab=259)],
    "tokens_zstd": [TokensZstdCodec(n_vocab=151936), TokensZstdCodec(n_vocab=259)],
    "zstd": [ZstdCodec(), ZstdCodec(level=3)],
}
FROZEN_CONFIGS = [  # what files hold: a changed key, order or value is a new format
    (KVLosslessCodec(), '{"id": "kv_lossless", "format_version": 1, "pair_offset": -1}'),
    (KVLossyCodec(bits=2.0, version=4), '{"id": "kv_lossy", "bits": 2.0, "max_kl": null, "version": 4}'),
    (KVLossyCodec(max_kl=0.01, version=5, weights={"k": [1.0, 2.0], "v": [[1.0, 0.5]]}),
     '{"id": "kv_lossy", "bits": null, "max_kl": 0.01, "version": 5, "weights": {"k": [1.0, 2.0], "v": [[1.0, 0.5]]}}'),
    (TokensModelCodec(), ('{"id": "tokens_model", "n_vocab": 151936, "version": 1, "checkpoint_tokens": 512, '
                          '"check_bits": 8}')),
    (TokensPortableCodec(n_vocab=259), '{"id": "tokens_portable", "n_vocab": 259, "version": 1}'),
    (TokensZstdCodec(n_vocab=259), '{"id": "tokens_zstd", "n_vocab": 259, "version": 1}'),
    (ZstdCodec(), '{"id": "zstd", "level": 19}'),
]
# the largest relative RMS error of a decoded tensor (values lost or misplaced come out near 1 or above)
STATE_ERROR = {"kv_lossless": 0.0, "kv_lossy": 0.35}
STATE_LAYOUTS = [(1, False), (8, True)]  # (cache type, flash attention): f16 with V transposed, q8_0 by rows


@pytest.fixture(params=registered_codecs())
def codec_id(request) -> str:
    return request.param


def test_every_registered_codec_runs_the_template():
    assert sorted(EXAMPLES) == sorted(FIXTURE_CHECKS) == registered_codecs()
    assert {type(codec).codec_id for codec, _ in FROZEN_CONFIGS} == set(registered_codecs())


def test_implements_one_kind_in_full(codec_id):
    cls = type(EXAMPLES[codec_id][0])
    assert cls.codec_id == codec_id and not inspect.isabstract(cls)
    assert sum(issubclass(cls, kind) for kind in KINDS) == 1
    assert all(type(codec) is cls for codec in EXAMPLES[codec_id])


def test_config_round_trip(codec_id):
    for codec in EXAMPLES[codec_id]:
        config = json.loads(json.dumps(codec.get_config(), allow_nan=False))
        assert config["id"] == codec_id
        again = get_codec(config)
        assert again == codec and again.get_config() == codec.get_config()
    with pytest.raises(CorruptDataError):
        get_codec({**EXAMPLES[codec_id][0].get_config(), "no_such_setting": 1})


@pytest.mark.parametrize("codec,frozen", FROZEN_CONFIGS, ids=lambda x: getattr(x, "codec_id", ""))
def test_configs_written_into_files_are_frozen(codec, frozen):
    assert json.dumps(codec.get_config()) == frozen
    assert get_codec(json.loads(frozen)) == codec


@pytest.mark.parametrize("version,name", SESSION_FILES)
def test_configs_in_committed_files_rebuild_to_themselves(version, name):
    configs = read_container(FIXTURES / f"session_v{version}_{name}.seqkv").meta["codecs"]
    for config in configs.values():
        assert get_codec(config).get_config() == config


# ---- round trips, one per kind ----

@pytest.fixture(scope="module")
def tiny_states(tiny_model_path):
    """(blob, parsed state, rope) of a short session, per cache layout of STATE_LAYOUTS."""
    from llama_cpp import Llama

    states = []
    for cache_type, flash_attn in STATE_LAYOUTS:
        llm = Llama(model_path=tiny_model_path, n_ctx=256, n_batch=64, verbose=False, type_k=cache_type,
                    type_v=cache_type, flash_attn=flash_attn, n_threads=2)
        llm.eval(llm.tokenize(b"Every codec keeps its contract, whatever it codes. " * 2))
        blob = bytes(read_seq_state(llm.ctx))
        states.append((blob, parse_seq_state(blob, model=llm), rope_params(llm)))
    return states


def test_round_trip(codec_id, request):
    kind = next(kind for kind in KINDS if isinstance(EXAMPLES[codec_id][0], kind))
    for codec in EXAMPLES[codec_id]:
        if kind is StateCodec:
            state_round_trip(codec, request.getfixturevalue("tiny_states"))
        else:
            ROUND_TRIPS[kind](codec)


def bytes_round_trip(codec: BytesCodec):
    rng = np.random.default_rng(0)
    for data in (b"", b"x", rng.integers(0, 256, 3000, np.uint8).tobytes(), b"KV cache " * 500):
        coded = codec.encode(data)
        assert codec.decode(coded) == data and codec.decode(coded, max_size=len(data)) == data
        if data:
            with pytest.raises(CorruptDataError):
                codec.decode(coded, max_size=len(data) - 1)
            with pytest.raises(CorruptDataError):
                codec.decode(coded[:-1])
    assert codec.encode(memoryview(b"abc")) == codec.encode(bytearray(b"abc"))


def tokens_round_trip(codec: TokensCodec):
    rng = np.random.default_rng(0)
    for tokens in ([], [0], rng.integers(0, codec.n_vocab, 500), np.minimum(rng.zipf(1.3, 500), codec.n_vocab - 1)):
        tokens = np.asarray(tokens, dtype=np.int32)
        coded = codec.encode(tokens)
        decoded = codec.decode(coded)
        assert decoded.dtype == np.int32
        np.testing.assert_array_equal(decoded, tokens)
        np.testing.assert_array_equal(codec.decode(coded, max_tokens=len(tokens)), tokens)
        if len(tokens):
            with pytest.raises(CorruptDataError):
                codec.decode(coded, max_tokens=len(tokens) - 1)
    with pytest.raises(ValueError):
        codec.encode([codec.n_vocab])


def model_tokens_round_trip(codec: ModelTokensCodec):
    rows = peaked_rows(40, codec.n_vocab)
    tokens = sample_tokens(rows).tolist()
    encoder = codec.encoder()
    for row, token in zip(rows, tokens):
        encoder.add(row, token)
    stream = encoder.finish()
    decoder = codec.decoder(stream)
    with pytest.raises(CorruptDataError):
        decoder.done()  # nothing decoded yet
    assert [decoder.next(row) for row in rows] == tokens
    decoder.done()
    empty = codec.encoder().finish()
    codec.decoder(empty).done()


def state_round_trip(codec: StateCodec, states):
    for blob, state, rope in states:
        rope = rope if codec.needs_model else None
        payloads = codec.encode_state(state, rope)
        assert len(payloads) == len(state.tensors()) and all(isinstance(p, bytes) for p in payloads)
        out, tensors = skeleton_layout(state.skeleton(), expected_size=len(blob))
        positions = [st.positions for sec in state.sections for st in sec.streams if st.cell_count]
        codec.decode_state(payloads, tensors, positions, rope)
        assert parse_seq_state(bytes(out)).skeleton() == state.skeleton()
        if STATE_ERROR[codec.codec_id] == 0:
            assert bytes(out) == blob
        for src, dst in zip(state.tensors(), tensors):
            x, y = tensor_values(src, rope), tensor_values(dst, rope)
            error = np.sqrt(np.mean((y - x) ** 2) / np.mean(x ** 2))
            assert error <= STATE_ERROR[codec.codec_id], (codec, src.name, error)
        _, tensors = skeleton_layout(state.skeleton(), expected_size=len(blob))
        with pytest.raises(CorruptDataError):
            codec.decode_state(payloads[:-1], tensors, positions, rope)


ROUND_TRIPS = {BytesCodec: bytes_round_trip, TokensCodec: tokens_round_trip, ModelTokensCodec: model_tokens_round_trip}


# ---- committed fixtures: the frozen formats ----

def kv_lossless_fixtures(codec: KVLosslessCodec):
    """The snapshot files' KV sections, with the codec their config names, and the single-tensor streams."""
    for version, name in SESSION_FILES:
        container = read_container(FIXTURES / f"session_v{version}_{name}.seqkv")
        meta, layout = container.meta, container.meta.get("layout", {})
        skeleton = get_codec(meta["codecs"]["skeleton"]).decode(container.payload(Kind.SKELETON))
        blob, tensors = skeleton_layout(skeleton, expected_size=meta["state_bytes"], **layout)
        file_codec = get_codec(meta["codecs"]["kv"])
        assert type(file_codec) is type(codec)
        positions = [st.positions for sec in parse_seq_state(blob, **layout).sections for st in sec.streams
                     if st.cell_count]
        file_codec.decode_state(container.payloads(Kind.KV), tensors, positions)
        expected = json.loads((FIXTURES / f"session_v{version}_expected.json").read_text())[name]
        assert hashlib.sha256(blob).hexdigest() == expected["state_sha256"]
    for entry in json.loads((FIXTURES / "kv_lossless_v1_manifest.json").read_text()):
        decoded = codec.decode_stream((FIXTURES / entry["coded"]).read_bytes())
        assert hashlib.sha256(decoded).hexdigest() == entry["raw_sha256"]


def kv_lossy_fixtures(codec: KVLossyCodec):
    digests = json.loads(DIGESTS.read_text())
    for name in NAMES:
        assert hashlib.sha256(decode_fixture(name, codec)).hexdigest() == digests[name], name


def tokens_portable_fixtures(codec: TokensPortableCodec):
    tokens = np.load(FIXTURES / "tokens_portable_v1_tokens.npy")
    decoded = get_codec({"id": "tokens_portable", "n_vocab": QWEN_VOCAB}).decode(
        (FIXTURES / "tokens_portable_v1.bin").read_bytes(), max_tokens=len(tokens))
    np.testing.assert_array_equal(decoded, tokens)
    for version, name in SESSION_FILES:
        container = read_container(FIXTURES / f"session_v{version}_{name}.seqkv")
        expected = json.loads((FIXTURES / f"session_v{version}_expected.json").read_text())[name]["tokens"]
        assert get_codec(container.meta["codecs"]["tokens"]).decode(container.payload(Kind.TOKENS)).tolist() == expected


def tokens_zstd_fixtures(codec: TokensZstdCodec):
    tokens = np.load(FIXTURES / "tokens_portable_v1_tokens.npy")
    decoded = get_codec({"id": "tokens_zstd", "n_vocab": QWEN_VOCAB, "version": 1}).decode(
        (FIXTURES / "tokens_zstd_v1.bin").read_bytes(), max_tokens=len(tokens))
    np.testing.assert_array_equal(decoded, tokens)
    with pytest.raises(CorruptDataError):  # ids beyond the vocabulary, as a damaged file could hold
        TokensZstdCodec(n_vocab=int(tokens.max())).decode((FIXTURES / "tokens_zstd_v1.bin").read_bytes())
    with pytest.raises(CorruptDataError):
        codec.decode((FIXTURES / "tokens_zstd_v1.bin").read_bytes()[:-3])


def tokens_model_fixtures(codec: TokensModelCodec):
    expected = np.load(FIXTURES / "tokens_model_v1_tokens.npy").tolist()
    rows, tokens = fixture_rows_and_tokens(len(expected))
    assert tokens == expected
    decoder = get_codec({"id": "tokens_model", "n_vocab": QWEN_VOCAB}).decoder(
        (FIXTURES / "tokens_model_v1.bin").read_bytes())
    assert [decoder.next(row) for row in rows] == expected
    decoder.done()


def zstd_fixtures(codec: ZstdCodec):
    expected = json.loads((FIXTURES / "zstd_v1_expected.json").read_text())
    data = get_codec(expected["config"]).decode((FIXTURES / "zstd_v1.bin").read_bytes(), max_size=expected["size"])
    assert len(data) == expected["size"] and hashlib.sha256(data).hexdigest() == expected["sha256"]
    for version, name in SESSION_FILES:  # the snapshot files' skeletons, bounded by the state size
        container = read_container(FIXTURES / f"session_v{version}_{name}.seqkv")
        skeleton = codec.decode(container.payload(Kind.SKELETON), max_size=container.meta["state_bytes"])
        skeleton_layout(skeleton, expected_size=container.meta["state_bytes"], **container.meta.get("layout", {}))


FIXTURE_CHECKS = {"kv_lossless": kv_lossless_fixtures, "kv_lossy": kv_lossy_fixtures,
                  "tokens_portable": tokens_portable_fixtures, "tokens_zstd": tokens_zstd_fixtures,
                  "tokens_model": tokens_model_fixtures,
                  "zstd": zstd_fixtures}


def test_committed_fixtures_decode_to_frozen_values(codec_id):
    FIXTURE_CHECKS[codec_id](EXAMPLES[codec_id][0])
