"""Model-coded tokens: frequencies, round trips, desync detection, damage, the frozen v1 format.

Regenerate the fixture (only when the format version changes): python tests/test_tokens_model.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seqkv_edge.codecs import get_codec
from seqkv_edge.codecs.tokens_model import (
    ModelTokenDecoder,
    ModelTokenEncoder,
    TokensModelCodec,
    ideal_bits,
    row_frequencies,
)
from seqkv_edge.errors import CorruptDataError

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_TOKENS = FIXTURES / "tokens_model_v1_tokens.npy"
FIXTURE_STREAM = FIXTURES / "tokens_model_v1.bin"
QWEN_VOCAB = 151936
SCALE = 1 << 31


def peaked_rows(n_rows: int, n_vocab: int, seed: int = 0) -> np.ndarray:
    """Logits like a language model's: a noisy floor and a few strong candidates."""
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n_rows, n_vocab), dtype=np.float32) * 2
    peaks = rng.integers(0, n_vocab, (n_rows, 4))
    rows[np.arange(n_rows)[:, None], peaks] += rng.uniform(4, 14, (n_rows, 4)).astype(np.float32)
    return rows


def sample_tokens(rows: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    probs = np.exp(rows - rows.max(axis=1, keepdims=True).astype(np.float64))
    probs /= probs.sum(axis=1, keepdims=True)
    return np.array([rng.choice(len(p), p=p) for p in probs], dtype=np.int32)


def formula_row(i: int, n_vocab: int = QWEN_VOCAB) -> np.ndarray:
    """A logits row from integer arithmetic and correctly rounded float64 ops only: the same on
    every machine and numpy version (the fixture cannot depend on a random generator's stream)."""
    j = np.arange(n_vocab, dtype=np.int64)
    floor = ((j * 104729 + i * 7919) % 8191).astype(np.float64) / 8191.0 * 6.0 - 3.0
    return (floor + 9.0 * (j % 997 == (i * 31) % 997)).astype(np.float32)


def formula_token(i: int, n_vocab: int = QWEN_VOCAB) -> int:
    if i % 5 == 4:
        return (i * 2654435761) % n_vocab
    return (i * 31) % 997 + 997 * ((i * 7) % 150)


def encode(rows, tokens, checkpoint_tokens: int = 512, check_bits: int = 8) -> bytes:
    encoder = ModelTokenEncoder(rows.shape[1], checkpoint_tokens, check_bits)
    for row, token in zip(rows, tokens):
        encoder.add(row, int(token))
    assert len(encoder) == len(tokens)
    return encoder.finish()


def decode(stream: bytes, rows) -> list[int]:
    decoder = ModelTokenDecoder(stream, rows.shape[1])
    tokens = [decoder.next(rows[i]) for i in range(decoder.n_tokens)]
    decoder.done()
    return tokens


# ---------------------------------------------------------------- frequencies


def _special_rows(n_vocab: int = 5000) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    rows = [np.zeros(n_vocab, np.float32), np.full(n_vocab, -1e30, np.float32), peaked_rows(1, n_vocab)[0]]
    spiky = rng.standard_normal(n_vocab).astype(np.float32)
    spiky[[1, 7]] = [np.inf, 3e38]
    spiky[[2, 3, 4]] = [-np.inf, np.nan, 1e-42]
    rows += [spiky, np.full(n_vocab, np.nan, np.float32), np.linspace(-1e4, 1e4, n_vocab, dtype=np.float32)]
    one_hot = np.full(n_vocab, -100, np.float32)
    one_hot[n_vocab - 1] = 100
    return rows + [one_hot]


SPECIAL_ROW_IDS = ["zeros", "tiny", "peaked", "inf-nan", "all-nan", "wide", "one-hot"]


@pytest.mark.parametrize("row", _special_rows(), ids=SPECIAL_ROW_IDS)
def test_frequencies_never_zero_and_sum_to_scale(row):
    freq = row_frequencies(row)
    assert freq.dtype == np.uint32 and freq.min() >= 1
    assert int(freq.sum(dtype=np.uint64)) == SCALE


def test_frequencies_full_vocab():
    freq = row_frequencies(peaked_rows(1, QWEN_VOCAB)[0])
    assert freq.min() >= 1 and int(freq.sum(dtype=np.uint64)) == SCALE


def test_quantisation_costs_under_half_a_percent():
    rows = peaked_rows(60, 20000, seed=1)
    tokens = sample_tokens(rows, seed=1)
    ideal = ideal_bits(rows, tokens).sum()
    coded = sum(31 - np.log2(row_frequencies(row)[token]) for row, token in zip(rows, tokens))
    assert abs(coded - ideal) <= 0.005 * ideal + 0.01


def test_encoder_range_matches_row_frequencies():
    from seqkv_edge import _native

    rows = peaked_rows(3, 3000, seed=2)
    handle = _native.ffi.gc(_native.lib.tokm_rows_new(3000), _native.lib.tokm_rows_free)
    out = _native.ffi.new("uint32_t[2]")
    for row in rows:
        freq = row_frequencies(row)
        starts = np.concatenate([[0], np.cumsum(freq, dtype=np.uint64)[:-1]])
        for token in (0, 1, 1500, 2999, int(row.argmax())):
            rc = _native.lib.tokm_token_range(handle, _native.ffi.from_buffer("float[]", row), token, out, out + 1)
            assert rc == 0 and (out[0], out[1]) == (starts[token], freq[token])


def test_ideal_bits():
    rows = peaked_rows(4, 1000)
    vector = ideal_bits(rows, [1, 2, 3, 4])
    assert vector.shape == (4,) and vector[2] == pytest.approx(ideal_bits(rows[2], 3))
    assert ideal_bits(np.zeros(1024, np.float32), 5) == pytest.approx(10.0)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("n_tokens", [0, 1, 2, 100])
@pytest.mark.parametrize("checkpoint_tokens, check_bits", [(1, 8), (7, 16), (256, 32), (512, 8)])
def test_roundtrip(n_tokens, checkpoint_tokens, check_bits):
    rows = peaked_rows(n_tokens, 1000, seed=n_tokens)
    tokens = sample_tokens(rows, seed=3)
    assert decode(encode(rows, tokens, checkpoint_tokens, check_bits), rows) == tokens.tolist()


@pytest.mark.parametrize("n_vocab", [1, 2, QWEN_VOCAB])
def test_roundtrip_vocab_sizes(n_vocab):
    rows = peaked_rows(12, n_vocab, seed=4)
    tokens = np.random.default_rng(4).integers(0, n_vocab, 12)  # improbable tokens too
    assert decode(encode(rows, tokens), rows) == tokens.tolist()


def test_size_within_one_percent_of_ideal():
    rows = peaked_rows(2000, 2000, seed=6)
    tokens = sample_tokens(rows, seed=6)
    ideal_bytes = ideal_bits(rows, tokens).sum() / 8
    stream = encode(rows, tokens)  # default checkpoints
    assert len(stream) <= 1.01 * ideal_bytes + 128
    assert len(stream) - ideal_bytes < 24  # the quantisation itself costs next to nothing


def test_deterministic():
    rows = peaked_rows(50, 3000, seed=8)
    tokens = sample_tokens(rows, seed=8)
    assert encode(rows, tokens) == encode(rows.copy(), tokens.copy())


def test_decoder_state_checks():
    rows = peaked_rows(5, 100)
    decoder = ModelTokenDecoder(encode(rows, [1, 2, 3, 4, 5]), 100)
    decoder.next(rows[0])
    with pytest.raises(CorruptDataError):
        decoder.done()
    for row in rows[1:]:
        decoder.next(row)
    decoder.done()
    assert decoder.tokens.tolist() == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError):
        decoder.next(rows[0])


def test_bad_arguments():
    encoder = ModelTokenEncoder(100)
    with pytest.raises(ValueError):
        encoder.add(np.zeros(99, np.float32), 1)
    with pytest.raises(ValueError):
        encoder.add(np.zeros(100, np.float32), 100)
    with pytest.raises(ValueError):
        ModelTokenEncoder(100, checkpoint_tokens=0)
    with pytest.raises(ValueError):
        ModelTokenEncoder(100, check_bits=12)


# ---------------------------------------------------------------- desync and damage


def test_one_flipped_logit_bit_is_caught_at_the_next_checkpoint():
    """After a desync the decoder may still pick the right tokens for a while (probable tokens
    survive a wrong state); the first chunk holding a wrong token fails its CRC, at its end."""
    rows = peaked_rows(100, 5000, seed=9)
    tokens = sample_tokens(rows, seed=9)
    stream = encode(rows, tokens, checkpoint_tokens=16, check_bits=32)
    damaged = rows.copy()
    damaged[30].view(np.uint32)[tokens[30]] ^= 1 << 23  # the exponent's low bit: x2 or /2
    decoder, decoded = ModelTokenDecoder(stream, 5000), []
    with pytest.raises(CorruptDataError, match="checkpoint"):
        for row in damaged:
            decoded.append(decoder.next(row))
    failed_at = len(decoded) + 1  # the token whose next() raised closes the failing chunk
    assert failed_at % 16 == 0 and failed_at > 30
    first_wrong = int(np.flatnonzero(np.array(decoder.tokens) != tokens[:failed_at])[0])
    assert failed_at - 16 <= first_wrong < failed_at
    with pytest.raises(CorruptDataError):  # a desynchronised decoder stays failed
        decoder.next(damaged[failed_at])
    with pytest.raises(CorruptDataError):
        decoder.done()


@pytest.mark.parametrize("seed", range(6))
def test_desync_with_small_checks_never_passes_silently(seed):
    """8-bit checks may let one wrong chunk through (1/256); the next check or the final rANS
    state catches it: decoding never completes with wrong tokens."""
    rows = peaked_rows(120, 3000, seed=seed)
    tokens = sample_tokens(rows, seed=seed)
    stream = encode(rows, tokens, checkpoint_tokens=8, check_bits=8)
    damaged = rows.copy()
    damaged[seed * 10 + 3].view(np.uint32)[tokens[seed * 10 + 3]] ^= 1 << 23
    with pytest.raises(CorruptDataError):
        decode(stream, damaged)


def decode_damaged(stream: bytes, rows) -> None:
    decoder = ModelTokenDecoder(stream, rows.shape[1])
    for i in range(decoder.n_tokens):
        decoder.next(rows[i % len(rows)])
    decoder.done()


def test_every_truncation_is_corrupt():
    rows = peaked_rows(40, 500, seed=10)
    stream = encode(rows, sample_tokens(rows, seed=10), checkpoint_tokens=16, check_bits=16)
    for length in range(len(stream)):
        with pytest.raises(CorruptDataError):
            decode_damaged(stream[:length], rows)


def test_every_bit_flip_is_corrupt():
    rows = peaked_rows(40, 500, seed=11)
    stream = encode(rows, sample_tokens(rows, seed=11), checkpoint_tokens=16, check_bits=8)
    for position in range(len(stream)):
        for bit in range(8):
            damaged = bytearray(stream)
            damaged[position] ^= 1 << bit
            with pytest.raises(CorruptDataError):
                decode_damaged(bytes(damaged), rows)


# ---------------------------------------------------------------- codec config and the frozen format


def test_codec_config_roundtrip():
    codec = TokensModelCodec(n_vocab=1000, checkpoint_tokens=64, check_bits=16)
    config = codec.get_config()
    assert config == {"id": "tokens_model", "n_vocab": 1000, "version": 1, "checkpoint_tokens": 64, "check_bits": 16}
    assert get_codec(config) == codec
    rows = peaked_rows(10, 1000)
    tokens = sample_tokens(rows)
    encoder = codec.encoder()
    for row, token in zip(rows, tokens):
        encoder.add(row, int(token))
    stream = encoder.finish()
    assert stream == encode(rows, tokens, checkpoint_tokens=64, check_bits=16)
    decoder = codec.decoder(stream)
    assert [decoder.next(row) for row in rows] == tokens.tolist()
    decoder.done()
    with pytest.raises(CorruptDataError):
        TokensModelCodec.from_config({**config, "version": 2})


def fixture_rows_and_tokens(n_tokens: int = 120):
    return (formula_row(i) for i in range(n_tokens)), [formula_token(i) for i in range(n_tokens)]


def test_fixture_v1_decodes_and_reencodes():
    """Format version 1 is frozen: old files must keep decoding, byte for byte."""
    expected, stream = np.load(FIXTURE_TOKENS).tolist(), FIXTURE_STREAM.read_bytes()
    rows, tokens = fixture_rows_and_tokens(len(expected))
    assert tokens == expected
    decoder = ModelTokenDecoder(stream, QWEN_VOCAB)
    encoder = ModelTokenEncoder(QWEN_VOCAB, checkpoint_tokens=32, check_bits=16)
    for row, token in zip(rows, tokens):
        assert decoder.next(row) == token
        encoder.add(row, token)
    decoder.done()
    assert encoder.finish() == stream


@pytest.mark.real_model
def test_real_model_roundtrip(real_model_path):
    from seqkv_edge.hardware import load_plain_llama

    llm = load_plain_llama(model_path=real_model_path, n_ctx=256, n_threads=2, verbose=False)
    ids = llm.tokenize(b"The GNU General Public License is a free, copyleft license for software.", add_bos=False)
    n_vocab = llm.n_vocab()

    def rows_after(prefix_tokens):
        llm.eval([prefix_tokens[-1]])
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,)).copy()

    encoder, ideal = ModelTokenEncoder(n_vocab, checkpoint_tokens=8, check_bits=32), 0.0
    for i in range(1, len(ids)):
        row = rows_after(ids[:i])
        encoder.add(row, ids[i])
        ideal += ideal_bits(row, ids[i])
    stream = encoder.finish()
    overhead = 3 + 4 * 2 + 1 + 8 + 4  # header, 2 checkpoint CRCs, payload length, final state, 1 word
    assert len(stream) <= 1.01 * ideal / 8 + overhead
    llm.reset()
    decoder, decoded = ModelTokenDecoder(stream, n_vocab), [ids[0]]
    for _ in range(len(ids) - 1):
        decoded.append(decoder.next(rows_after(decoded)))
    decoder.done()
    assert decoded == ids


def _regenerate_fixture() -> None:
    rows, tokens = fixture_rows_and_tokens()
    np.save(FIXTURE_TOKENS, np.array(tokens, np.int32))
    encoder = ModelTokenEncoder(QWEN_VOCAB, checkpoint_tokens=32, check_bits=16)
    for row, token in zip(rows, tokens):
        encoder.add(row, token)
    FIXTURE_STREAM.write_bytes(encoder.finish())


if __name__ == "__main__":
    _regenerate_fixture()
