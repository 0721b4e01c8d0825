"""Portable token codec: token ids coded with a deterministic context model, no LLM needed.

The C core (``native/tokens_cm*.c``) mixes adaptive order-0..3 and bucket-class contexts and a
match model over an Exp-Golomb binarisation of the ids (a lower Qwen2 id is an earlier BPE merge,
so the bit length of an id is a frequency class), with exclusion of impossible subtrees, and drives
a binary arithmetic coder.  Integer arithmetic only: every machine decodes every file.  About
10-11 bits/token on 2,000-token English texts, 9-10 on 8,000 (``benchmarks/tokens_bits.py``).

Stream, format version 1 (little-endian)::

    varint  n_tokens
    u32     CRC32 of the tokens as little-endian int32
    bytes   arithmetic-coded payload (self-delimiting: the decoder knows where it ends)

>>> import numpy as np
>>> codec = TokensPortableCodec(n_vocab=151936)
>>> tokens = np.array([791, 4062, 13876, 38835, 34208, 916, 279, 15678, 5562, 13], dtype=np.int32)
>>> bool((codec.decode(codec.encode(tokens)) == tokens).all())
True
"""
from __future__ import annotations

import logging

import numpy as np

from ..checksum import crc32
from ..errors import CorruptDataError, SeqKVError
from ..native import require
from .base import TokensCodec
from .registry import register_codec
from .varint import read_varint, write_varint  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_N_VOCAB = 151936  # Qwen2 / Qwen2.5 vocabulary
MAX_TOKENS_PER_BYTE = 16384  # sanity bound on a stored count: the coder cannot beat this
_CRC_BYTES = 4


def _lib():
    return require()


# ---------------------------------------------------------------- helpers shared with tokens_model


def tokens_crc(tokens: np.ndarray) -> int:
    """CRC32 of token ids as little-endian int32."""
    return crc32(np.ascontiguousarray(tokens, dtype="<i4").tobytes())


def check_tokens(tokens, n_vocab: int) -> np.ndarray:
    """Token ids as a contiguous int32 array; ``ValueError`` for ids outside ``[0, n_vocab)``."""
    array = np.asarray(tokens)
    if array.ndim != 1:
        raise ValueError(f"tokens must be a 1-D array, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= n_vocab):
        bad = array[(array < 0) | (array >= n_vocab)][0]
        raise ValueError(f"token id {int(bad)} is outside [0, {n_vocab}) (n_vocab={n_vocab})")
    return np.ascontiguousarray(array, dtype=np.int32)


def check_n_vocab(n_vocab) -> int:
    if not isinstance(n_vocab, (int, np.integer)) or not 1 <= n_vocab <= 1 << 24:
        raise ValueError(f"n_vocab must be an integer in [1, 2^24], got {n_vocab!r}")
    return int(n_vocab)


def check_version(version, what: str) -> int:
    if version != FORMAT_VERSION:
        raise CorruptDataError(
            f"{what} format version {version!r} is not supported (this build reads {FORMAT_VERSION}); "
            "the file was written by a newer seqkv_edge"
        )
    return FORMAT_VERSION


# ---------------------------------------------------------------- the codec


def _encode_payload(tokens: np.ndarray, n_vocab: int) -> bytes:
    ffi, lib = _lib()
    n = len(tokens)
    for capacity in (lib.tokcm_bound(n), 32 * n + 64):  # the second always suffices
        out = bytearray(capacity)
        written = lib.tokcm_encode(
            ffi.from_buffer("int32_t[]", tokens), n, n_vocab, ffi.from_buffer("uint8_t[]", out), capacity
        )
        if written != lib.SKV_ERR_CAPACITY:
            break
    if written == lib.SKV_ERR_MEMORY:
        raise MemoryError(f"tokens_portable: no memory for the context model of {n} tokens")
    if written < 0:
        raise SeqKVError(f"tokens_portable: encoding {n} tokens failed (C error {written})")
    return bytes(out[:written])


def _decode_payload(payload: memoryview, n_tokens: int, n_vocab: int, out: np.ndarray) -> int:
    ffi, lib = _lib()
    consumed = lib.tokcm_decode(
        ffi.from_buffer("uint8_t[]", payload), len(payload), n_tokens, n_vocab, ffi.from_buffer("int32_t[]", out)
    )
    if consumed == lib.SKV_ERR_MEMORY:
        raise MemoryError(f"tokens_portable: no memory for the context model of {n_tokens} tokens")
    if consumed < 0:
        raise CorruptDataError(
            f"tokens_portable: the payload of {n_tokens} tokens does not decode (damaged or truncated)"
        )
    return consumed


@register_codec
class TokensPortableCodec(TokensCodec):
    """Lossless codec for token ids that needs no language model to decode.

    ``encode(tokens) -> bytes``, ``decode(buf) -> np.ndarray[int32]``.  Ids outside
    ``[0, n_vocab)`` raise ``ValueError``; damaged or truncated input raises ``CorruptDataError``.
    """

    codec_id = "tokens_portable"

    def __init__(self, n_vocab: int = DEFAULT_N_VOCAB, version: int = FORMAT_VERSION):
        self.n_vocab = check_n_vocab(n_vocab)
        self.version = check_version(version, self.codec_id)

    def encode(self, tokens) -> bytes:
        tokens = check_tokens(tokens, self.n_vocab)
        header = write_varint(len(tokens)) + tokens_crc(tokens).to_bytes(_CRC_BYTES, "little")
        stream = header + _encode_payload(tokens, self.n_vocab)
        log.debug("tokens_portable: %d tokens -> %d bytes", len(tokens), len(stream))
        return stream

    def decode(self, buf, *, max_tokens: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """The tokens of a stream (written into ``out`` when given); a stream that claims more than ``max_tokens``
        (e.g. the context's n_ctx, or a count the caller knows) or ``len(out)`` is refused before anything is
        allocated."""
        if out is not None:
            max_tokens = len(out) if max_tokens is None else min(max_tokens, len(out))
        tokens, end = self.decode_prefix(buf, max_tokens)
        size = len(memoryview(buf).cast("B"))
        if end != size:
            raise CorruptDataError(f"{self.codec_id}: {size - end} bytes follow the end of the stream")
        if out is not None:
            out[...] = tokens
            return out
        return tokens

    def decode_prefix(self, buf, max_tokens: int | None = None) -> tuple[np.ndarray, int]:
        """Decodes the stream at the start of ``buf``; returns ``(tokens, bytes it spans)``."""
        view = memoryview(buf).cast("B")
        n_tokens, pos = read_varint(view, 0, self.codec_id)
        if pos + _CRC_BYTES > len(view):
            raise CorruptDataError(f"{self.codec_id}: stream of {len(view)} bytes is truncated in its header")
        crc = int.from_bytes(view[pos : pos + _CRC_BYTES], "little")
        payload = view[pos + _CRC_BYTES :]
        if n_tokens > MAX_TOKENS_PER_BYTE * (len(payload) + 1) or n_tokens >= 1 << 31:
            raise CorruptDataError(
                f"{self.codec_id}: a count of {n_tokens} tokens in {len(payload)} bytes is impossible"
            )
        if max_tokens is not None and n_tokens > max_tokens:
            raise CorruptDataError(f"{self.codec_id}: the stream holds {n_tokens} tokens, at most {max_tokens} "
                                   "expected here")
        tokens = np.empty(n_tokens, dtype=np.int32)
        consumed = _decode_payload(payload, n_tokens, self.n_vocab, tokens)
        if tokens_crc(tokens) != crc:
            raise CorruptDataError(f"{self.codec_id}: decoded tokens fail their CRC32 (damaged data)")
        return tokens, pos + _CRC_BYTES + consumed

    def get_config(self) -> dict:
        return {"id": self.codec_id, "n_vocab": self.n_vocab, "version": self.version}
