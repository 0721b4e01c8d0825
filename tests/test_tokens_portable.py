"""The portable token codec: round trips, damage, determinism, and the frozen v1 format.

Regenerate the fixture (only when the format version changes): python tests/test_tokens_portable.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seqkv_edge.codecs import get_codec
from seqkv_edge.codecs.tokens_portable import TokensPortableCodec
from seqkv_edge.errors import CorruptDataError, ModelNotInstalledError

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_TOKENS = FIXTURES / "tokens_portable_v1_tokens.npy"
FIXTURE_STREAM = FIXTURES / "tokens_portable_v1.bin"
GPL3 = Path("/usr/share/common-licenses/GPL-3")
N_VOCAB = 151936


@pytest.fixture(scope="module")
def codec() -> TokensPortableCodec:
    return TokensPortableCodec(N_VOCAB)


@pytest.fixture(scope="module")
def english_tokens() -> np.ndarray:
    """Tokens of an English text: the committed fixture (GPL-3, default model vocabulary)."""
    return np.load(FIXTURE_TOKENS)


def zipf_tokens(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.minimum(rng.zipf(1.3, n) - 1, N_VOCAB - 1).astype(np.int32)


def roundtrip(codec: TokensPortableCodec, tokens) -> bytes:
    coded = codec.encode(tokens)
    decoded = codec.decode(coded)
    assert decoded.dtype == np.int32
    np.testing.assert_array_equal(decoded, np.asarray(tokens, dtype=np.int32))
    return coded


@pytest.mark.parametrize("tokens", [[], [0], [N_VOCAB - 1], [5, 5], [198, 279, 198, 279, 198]])
def test_roundtrip_small(codec, tokens):
    roundtrip(codec, np.array(tokens, dtype=np.int32))


def test_roundtrip_random_uniform(codec):
    tokens = np.random.default_rng(1).integers(0, N_VOCAB, 3000).astype(np.int32)
    coded = roundtrip(codec, tokens)
    assert 8 * len(coded) / len(tokens) < np.log2(N_VOCAB) + 0.3  # incompressible: ~17.2 bits


def test_roundtrip_long_and_repetitive(codec):
    tokens = np.concatenate([zipf_tokens(60_000), np.full(5000, 13, np.int32), zipf_tokens(500)[np.arange(5000) % 500]])
    roundtrip(codec, tokens)


@pytest.mark.parametrize("n_vocab", [1, 2, 3, 256, 257, 1000, 1 << 24])
def test_roundtrip_vocab_sizes(n_vocab):
    codec = TokensPortableCodec(n_vocab)
    rng = np.random.default_rng(n_vocab)
    roundtrip(codec, rng.integers(0, n_vocab, 500).astype(np.int32))
    roundtrip(codec, np.full(300, n_vocab - 1, np.int32))


def test_accepts_other_integer_dtypes(codec):
    tokens = np.array([1, 2, 3, 151935], dtype=np.int64)
    np.testing.assert_array_equal(codec.decode(codec.encode(tokens)), tokens)
    assert codec.encode([1, 2, 3]) == codec.encode(np.array([1, 2, 3], np.int32))


@pytest.mark.parametrize("bad", [[-1], [N_VOCAB], [3, 1 << 40], [[1, 2]], [1.5]])
def test_rejects_tokens_outside_vocab(codec, bad):
    with pytest.raises(ValueError):
        codec.encode(np.array(bad))


def test_compresses_english(codec, english_tokens):
    coded = codec.encode(english_tokens)
    assert 8 * len(coded) / len(english_tokens) < 11.5  # ~10.9 on these 600 tokens; zstd-19: ~13.6


def test_deterministic(codec, english_tokens):
    assert codec.encode(english_tokens) == codec.encode(english_tokens.copy())
    assert TokensPortableCodec(N_VOCAB).encode(english_tokens) == codec.encode(english_tokens)


def test_every_truncation_is_corrupt(codec, english_tokens):
    coded = codec.encode(english_tokens[:200])
    for length in range(len(coded)):
        with pytest.raises(CorruptDataError):
            codec.decode(coded[:length])


def test_every_bit_flip_is_corrupt(codec, english_tokens):
    coded = codec.encode(english_tokens[:80])
    for position in range(len(coded)):
        for bit in range(8):
            damaged = bytearray(coded)
            damaged[position] ^= 1 << bit
            with pytest.raises(CorruptDataError):
                codec.decode(bytes(damaged))


def test_garbage_and_huge_counts_are_corrupt(codec):
    rng = np.random.default_rng(3)
    for size in (1, 9, 100, 1000):
        with pytest.raises(CorruptDataError):
            codec.decode(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    with pytest.raises(CorruptDataError):
        codec.decode(b"\xff" * 9 + b"\x01" + bytes(8))  # a count of 2^63 tokens


def test_trailing_bytes_and_decode_prefix(codec, english_tokens):
    coded = codec.encode(english_tokens[:100])
    with pytest.raises(CorruptDataError):
        codec.decode(coded + b"\0")
    tokens, end = codec.decode_prefix(coded + b"next stream")
    assert end == len(coded)
    np.testing.assert_array_equal(tokens, english_tokens[:100])


def test_decode_into_out(codec, english_tokens):
    out = np.empty(len(english_tokens), np.int32)
    assert codec.decode(codec.encode(english_tokens), out=out) is out
    np.testing.assert_array_equal(out, english_tokens)


def test_config_roundtrip(codec):
    config = codec.get_config()
    assert config == {"id": "tokens_portable", "n_vocab": N_VOCAB, "version": 1}
    assert get_codec(config) == codec
    with pytest.raises(CorruptDataError):
        TokensPortableCodec.from_config({**config, "version": 2})
    with pytest.raises(ValueError):
        TokensPortableCodec(0)


def test_fixture_v1_decodes_and_reencodes(codec):
    """Format version 1 is frozen: old files must keep decoding, byte for byte."""
    tokens, stream = np.load(FIXTURE_TOKENS), FIXTURE_STREAM.read_bytes()
    np.testing.assert_array_equal(codec.decode(stream), tokens)
    assert codec.encode(tokens) == stream


def test_real_tokenizer_gpl3_under_11_bits(codec):
    """2,000 tokens of GPL-3 with the default model's own tokenizer (~10 bits/token)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from seqkv_edge.models import default_model_path

    if not GPL3.is_file():
        pytest.skip(f"{GPL3} not present")
    try:
        path = default_model_path()
    except ModelNotInstalledError as exc:
        pytest.skip(f"default model not installed: {exc}")
    vocab = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    tokens = np.array(vocab.tokenize(GPL3.read_bytes(), add_bos=False, special=False)[:2000], np.int32)
    coded = roundtrip(codec, tokens)
    assert 8 * len(coded) / len(tokens) <= 11.0


def _regenerate_fixture() -> None:
    import llama_cpp

    from seqkv_edge.models import default_model_path

    vocab = llama_cpp.Llama(model_path=default_model_path(), vocab_only=True, verbose=False)
    tokens = np.array(vocab.tokenize(GPL3.read_bytes(), add_bos=False, special=False)[:600], np.int32)
    np.save(FIXTURE_TOKENS, tokens)
    FIXTURE_STREAM.write_bytes(TokensPortableCodec(N_VOCAB).encode(tokens))


if __name__ == "__main__":
    _regenerate_fixture()
