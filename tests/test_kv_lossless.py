"""kv_lossless: bit-exact round trips, adversarial input, corruption, the frozen v1 format.

The committed fixtures (tests/fixtures/kv_lossless_v1_*) are real KV bytes of the default model
and their coded form: decoding them must give the same bytes forever. To (re)write them from the
dumps in /tmp/kvdata (only when introducing a new format version, under a new name):
    python tests/test_kv_lossless.py --write-fixtures
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from seqkv_edge import native
from seqkv_edge.codecs import get_codec
from seqkv_edge.codecs.kv_lossless import (
    GGML_BF16,
    GGML_F16,
    GGML_F32,
    GGML_Q4_0,
    GGML_Q8_0,
    KVLosslessCodec,
    stream_size,
)
from seqkv_edge.errors import CorruptDataError, UnsupportedStateError

FIXTURES = Path(__file__).parent / "fixtures"
MANIFEST = FIXTURES / "kv_lossless_v1_manifest.json"
KVDATA = Path("/tmp/kvdata")
ELEM = {GGML_F32: 4, GGML_F16: 2, GGML_BF16: 2}
rng = np.random.default_rng(1234)


def tensor_shape(ggml_type, token_major, n_channels, n_tokens):
    if token_major:
        return (n_tokens, native.kv_row_bytes(ggml_type, n_channels))
    return (n_channels, n_tokens * ELEM[ggml_type])


def round_trip(codec, data, ggml_type, token_major, n_channels):
    blob = codec.encode_tensor(data, ggml_type, token_major, n_channels)
    out = np.full_like(data, 0xA5)
    codec.decode_tensor(blob, ggml_type, token_major, n_channels, out)
    np.testing.assert_array_equal(out, data)
    assert stream_size(blob + b"trailing") == len(blob)
    return blob


def gaussian_f16(n_tokens, n_channels, offset_scale=3.0):
    offsets = rng.normal(size=n_channels) * offset_scale
    values = offsets + rng.normal(size=(n_tokens, n_channels)) * rng.uniform(0.01, 2, n_channels)
    return values.astype(np.float16)


def float_words(values, ggml_type):
    """f32 array -> uint8 bytes of the given float type (bf16 by truncation)."""
    if ggml_type == GGML_F32:
        return values.astype(np.float32).view(np.uint8)
    if ggml_type == GGML_F16:
        return values.astype(np.float16).view(np.uint8)
    return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)


PLAIN = [GGML_F16, GGML_BF16, GGML_F32]
ALL = PLAIN + [GGML_Q8_0, GGML_Q4_0]


@pytest.fixture(scope="module")
def codec():
    return KVLosslessCodec()


@pytest.mark.parametrize("ggml_type", PLAIN)
@pytest.mark.parametrize("token_major", [True, False])
def test_round_trip_gaussian(codec, ggml_type, token_major):
    n_tokens, n_channels = 300, 64
    values = gaussian_f16(n_tokens, n_channels).astype(np.float32)
    data = float_words(values if token_major else values.T.copy(), ggml_type)
    data = data.reshape(tensor_shape(ggml_type, token_major, n_channels, n_tokens))
    blob = round_trip(codec, data, ggml_type, token_major, n_channels)
    assert len(blob) < data.nbytes  # structured data compresses


@pytest.mark.parametrize("ggml_type", ALL)
@pytest.mark.parametrize("kind", ["random", "zeros", "constant", "nan_inf", "denormal", "extremes"])
def test_round_trip_adversarial(codec, ggml_type, kind):
    token_major = True
    n_tokens, n_channels = 97, 64
    shape = tensor_shape(ggml_type, token_major, n_channels, n_tokens)
    data = rng.integers(0, 256, size=shape, dtype=np.uint8)
    if kind == "zeros":
        data[:] = 0
    elif kind == "constant":
        data[:] = data[0]
    elif kind in ("nan_inf", "denormal", "extremes") and ggml_type in ELEM:
        words = data.view(np.uint16)
        if kind == "nan_inf":
            words |= 0x7C00 if ggml_type == GGML_F16 else 0x7F80
        elif kind == "denormal":
            words &= 0x83FF if ggml_type == GGML_F16 else 0x807F
        else:
            words[:] = rng.choice(np.array([0x7BFF, 0xFBFF, 0x7F7F, 0xFF7F, 0x0001, 0x8000], np.uint16), words.shape)
    round_trip(codec, data, ggml_type, token_major, n_channels)


@pytest.mark.parametrize("ggml_type", PLAIN)
@pytest.mark.parametrize("n_tokens", [0, 1, 2, 5])
def test_round_trip_tiny(codec, ggml_type, n_tokens):
    for token_major in (True, False):
        for n_channels in (1, 3, 8):
            shape = tensor_shape(ggml_type, token_major, n_channels, n_tokens)
            data = rng.integers(0, 256, size=shape, dtype=np.uint8)
            round_trip(codec, data, ggml_type, token_major, n_channels)


@pytest.mark.parametrize("ggml_type", [GGML_Q8_0, GGML_Q4_0])
def test_round_trip_quantized_structure(codec, ggml_type):
    n_tokens, n_channels = 128, 128
    shape = tensor_shape(ggml_type, True, n_channels, n_tokens)
    data = rng.integers(0, 256, size=shape, dtype=np.uint8)
    block = 34 if ggml_type == GGML_Q8_0 else 18
    blocks = data.reshape(n_tokens, -1, block)
    blocks[:, :, :2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)  # constant scales
    round_trip(codec, data, ggml_type, True, n_channels)


def test_pair_offsets_and_odd_shapes(codec):
    values = gaussian_f16(50, 96).view(np.uint8)
    for pair_offset in (-1, 0, 1, 16, 48, 7):
        round_trip(KVLosslessCodec(pair_offset=pair_offset), values, GGML_F16, True, 96)


def test_real_dump_slices(codec):
    if not (KVDATA / "load.py").exists():
        pytest.skip("no KV dumps in /tmp/kvdata")
    sys.path.insert(0, str(KVDATA))
    from load import load  # noqa: E402

    for name, ggml_type in (("seq_nofa_f16.bin", GGML_F16), ("seq_fa_q8_0.bin", GGML_Q8_0),
                            ("seq_fa_q4_0.bin", GGML_Q4_0)):
        if not (KVDATA / name).exists():
            continue
        K, V, v_trans = load(str(KVDATA / name))
        for layer in (0, 11):
            round_trip(codec, np.ascontiguousarray(K[layer][:400]), ggml_type, True, 128)
            v = V[layer]
            sliced = np.ascontiguousarray(v[:, :800] if v_trans else v[:400])
            round_trip(codec, sliced, ggml_type, not v_trans, 128)


def corrupted_variants(blob):
    yield blob[: len(blob) // 2]
    yield blob[:-1]
    yield b""
    for pos in {0, 3, 4, 5, 9, 20, 24, 31, 33, len(blob) // 2, len(blob) - 5, len(blob) - 1}:
        bad = bytearray(blob)
        bad[pos] ^= 0x10
        yield bytes(bad)


@pytest.mark.parametrize("ggml_type", ALL)
def test_corrupt_streams_raise(codec, ggml_type):
    n_tokens, n_channels = 64, 64
    shape = tensor_shape(ggml_type, True, n_channels, n_tokens)
    if ggml_type in ELEM:
        data = float_words(gaussian_f16(n_tokens, n_channels).astype(np.float32), ggml_type).reshape(shape)
    else:
        data = rng.integers(0, 256, size=shape, dtype=np.uint8)
    blob = codec.encode_tensor(data, ggml_type, True, n_channels)
    out = np.empty_like(data)
    for bad in corrupted_variants(blob):
        with pytest.raises(CorruptDataError):
            codec.decode_tensor(bad, ggml_type, True, n_channels, out)


def test_mismatched_description_raises(codec):
    data = gaussian_f16(32, 16).view(np.uint8)
    blob = codec.encode_tensor(data, GGML_F16, True, 16)
    with pytest.raises(CorruptDataError):
        codec.decode_tensor(blob, GGML_BF16, True, 16, np.empty_like(data))
    with pytest.raises(CorruptDataError):
        codec.decode_tensor(blob, GGML_F16, True, 16, np.empty((31, 32), np.uint8))
    with pytest.raises(CorruptDataError):
        codec.decode_tensor(blob, GGML_F16, False, 16, np.empty((16, 64), np.uint8))


def test_bad_arguments(codec):
    data = np.zeros((4, 32), np.uint8)
    with pytest.raises(UnsupportedStateError):
        codec.encode_tensor(data, 3, True, 16)  # q4_1
    with pytest.raises(UnsupportedStateError):
        codec.encode_tensor(np.zeros((64, 8), np.uint8), GGML_Q8_0, False, 64)
    with pytest.raises(ValueError):
        codec.encode_tensor(data, GGML_F16, True, 15)
    with pytest.raises(ValueError):
        codec.encode_tensor(data.astype(np.int16), GGML_F16, True, 16)
    with pytest.raises(ValueError):
        KVLosslessCodec(format_version=2)


def test_many_matches_one_by_one():
    codec = KVLosslessCodec(n_threads=2)
    tensors = [gaussian_f16(100 + 10 * i, 32).view(np.uint8) for i in range(6)]
    blobs = codec.encode_many([(t, GGML_F16, True, 32) for t in tensors])
    assert blobs == [codec.encode_tensor(t, GGML_F16, True, 32) for t in tensors]
    outs = [np.empty_like(t) for t in tensors]
    codec.decode_many([(b, GGML_F16, True, 32, o) for b, o in zip(blobs, outs)])
    for t, o in zip(tensors, outs):
        np.testing.assert_array_equal(t, o)


def test_config_round_trip_and_self_described_stream():
    codec = KVLosslessCodec(pair_offset=32)
    config = json.loads(json.dumps(codec.get_config()))
    assert config["format_version"] == 1
    assert get_codec(config) == codec
    data = gaussian_f16(20, 64).view(np.uint8)
    np.testing.assert_array_equal(codec.decode_stream(codec.encode_tensor(data, GGML_F16, True, 64)), data)


# ---- the frozen format: committed fixtures ----

def load_fixtures():
    return json.loads(MANIFEST.read_text()) if MANIFEST.exists() else []


@pytest.mark.parametrize("entry", load_fixtures(), ids=lambda e: e["name"])
def test_fixture_decodes_forever(codec, entry):
    raw = (FIXTURES / entry["raw"]).read_bytes()
    coded = (FIXTURES / entry["coded"]).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == entry["raw_sha256"]
    assert coded[:4] == b"KVL\x01" and not coded[5] & 2  # format 1, coded (not stored raw)
    out = np.empty(entry["shape"], np.uint8)
    codec.decode_tensor(coded, entry["ggml_type"], entry["token_major"], entry["n_channels"], out)
    assert out.tobytes() == raw
    again = codec.encode_tensor(out, entry["ggml_type"], entry["token_major"], entry["n_channels"])
    np.testing.assert_array_equal(codec.decode_stream(again), out)


def test_fixtures_present():
    names = {entry["name"] for entry in load_fixtures()}
    assert {"f16_k", "f16_k_rope_pairs", "f16_v_transposed", "q8_0_k", "q4_0_k", "bf16_k", "f32_k"} <= names


def write_fixtures():  # pragma: no cover - maintenance helper
    sys.path.insert(0, str(KVDATA))
    from load import load

    K, V, _ = load(str(KVDATA / "seq_nofa_f16.bin"))
    k16 = np.ascontiguousarray(K[8][:32, :128])                       # 32 tokens x 64 channels
    bf = (k16.view(np.float16).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    entries = [
        ("f16_k", k16, GGML_F16, True, 64),
        ("f16_k_rope_pairs", np.ascontiguousarray(K[8][:64, :128]), GGML_F16, True, 64),
        ("f16_v_transposed", np.ascontiguousarray(V[8][:16, :128]), GGML_F16, False, 16),
        ("q8_0_k", np.ascontiguousarray(load(str(KVDATA / "seq_fa_q8_0.bin"))[0][8][:32, :68]), GGML_Q8_0, True, 64),
        ("q4_0_k", np.ascontiguousarray(load(str(KVDATA / "seq_fa_q4_0.bin"))[0][8][:128, :36]), GGML_Q4_0, True, 64),
        ("bf16_k", np.ascontiguousarray(bf.view(np.uint8)[:, :64]), GGML_BF16, True, 32),
        ("f32_k", np.ascontiguousarray(k16[:16, :32].view(np.float16).astype(np.float32).view(np.uint8)),
         GGML_F32, True, 16),
    ]
    manifest = []
    for name, data, ggml_type, token_major, n_channels in entries:
        codec = KVLosslessCodec(pair_offset=32 if name.endswith("pairs") else -1)
        coded = codec.encode_tensor(data, ggml_type, token_major, n_channels)
        assert not coded[5] & 2, f"{name}: stored raw, so it would not freeze the coded format"
        raw_name, coded_name = f"kv_lossless_v1_{name}.raw", f"kv_lossless_v1_{name}.kvl"
        (FIXTURES / raw_name).write_bytes(data.tobytes())
        (FIXTURES / coded_name).write_bytes(coded)
        manifest.append({"name": name, "raw": raw_name, "coded": coded_name, "ggml_type": ggml_type,
                         "token_major": token_major, "n_channels": n_channels, "shape": list(data.shape),
                         "raw_sha256": hashlib.sha256(data.tobytes()).hexdigest()})
        print(f"{name}: {data.nbytes} -> {len(coded)} bytes")
    MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":  # pragma: no cover
    if "--write-fixtures" in sys.argv:
        write_fixtures()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_codes_with_pools_of_its_own():
    """The kept coding pools' threads stay in the parent on fork: a child (multiprocessing's fork start, prefork
    servers) must start its own instead of waiting on the parent's forever."""
    import signal

    codec = KVLosslessCodec(n_threads=2)
    data = np.random.default_rng(0).integers(0, 1 << 16, (64, 64)).astype(np.uint16).view(np.uint8)
    items = [(data, GGML_F16, True, 64)] * 4
    want = codec.encode_many(items)
    pid = os.fork()
    if pid == 0:  # the child: a hang ends by the alarm, a wrong answer by the exit code
        signal.alarm(20)
        os._exit(0 if codec.encode_many(items) == want else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
