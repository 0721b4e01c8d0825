"""Model-coded tokens: rANS with the language model's own next-token distribution.

The smallest way to store a session: each token costs about -log2 p(token) under the model
(~2.7 bits/token on English here).  The encoder takes one logits row and the token actually
chosen at a time (``add``), the decoder takes one logits row at a time and returns the next token
(``next``); decoding therefore replays the model.  Both sides turn a float32 row into the same
integer frequencies (``native/tokens_model.c``: every token gets a frequency >= 1, the row sums to
2^31, only an exact float subtract/multiply and integer tables are involved), so bit-identical
logits give bit-identical frequencies on every machine.

Desynchronisation (the decoder fed logits that differ from the encoder's: another model, build,
thread count or eval schedule) cannot be seen from the rANS state alone, so the stream carries a
check of the decoded tokens every ``checkpoint_tokens`` tokens: the low ``check_bits`` bits of the
CRC32 of the chunk.  A desynchronised decoder raises :class:`CorruptDataError` at the end of the
first chunk holding a wrong token (it may keep decoding right tokens for a while: probable tokens
survive a wrong state).  A desync persists, so a wrong chunk that passes its check (probability
2^-check_bits) fails at the next one, and the rANS state must also end exactly where the encoder
started: wrong tokens are never accepted silently.  The defaults (512 tokens, 8 bits) cost 1 byte
per 512 tokens, 0.016 bits/token, which keeps long sessions within 1% of the ideal code length
at ~2 bits/token; ``check_bits=32, checkpoint_tokens=256`` gives a full CRC32 every 256 tokens
(0.125 bits/token).

Stream, format version 1 (little-endian)::

    varint  n_tokens
    varint  checkpoint_tokens
    u8      check_bits (8, 16 or 32)
    uN      per chunk of checkpoint_tokens tokens (the last may be shorter): the low check_bits
            bits of the CRC32 of its tokens as int32; ceil(n_tokens / checkpoint_tokens) of them
    varint  payload length
    bytes   rANS payload (64-bit state, 32-bit words, scale 2^31; empty when n_tokens is 0)

>>> import numpy as np
>>> logits = np.random.default_rng(0).standard_normal((3, 1000)).astype(np.float32)
>>> encoder = ModelTokenEncoder(n_vocab=1000)
>>> for row, token in zip(logits, [7, 42, 999]):
...     encoder.add(row, token)
>>> decoder = ModelTokenDecoder(encoder.finish(), n_vocab=1000)
>>> [decoder.next(row) for row in logits]
[7, 42, 999]
>>> decoder.done()
"""
from __future__ import annotations

import ctypes
import logging

import numpy as np

from ..errors import CorruptDataError, SeqKVError
from ..native import require
from .base import ModelTokensCodec
from .registry import register_codec
from .tokens_portable import (
    DEFAULT_N_VOCAB,
    FORMAT_VERSION,
    check_n_vocab,
    check_version,
    read_varint,
    tokens_crc,
    write_varint,
)

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_TOKENS = 512
DEFAULT_CHECK_BITS = 8
MAX_CHECKPOINT_TOKENS = 1 << 20
CHECK_DTYPES = {8: "<u1", 16: "<u2", 32: "<u4"}


def _lib():
    return require()


def _check_row(logits_row, n_vocab: int) -> np.ndarray:
    """A float32 row of n_vocab; a ctypes float pointer (``llm._ctx.get_logits()``) is read in place."""
    if isinstance(logits_row, ctypes._Pointer):
        logits_row = np.ctypeslib.as_array(logits_row, shape=(n_vocab,))
    row = np.ascontiguousarray(logits_row, dtype=np.float32)
    if row.shape != (n_vocab,):
        raise ValueError(f"a logits row must have shape ({n_vocab},), got {row.shape}")
    return row


def _check_interval(checkpoint_tokens) -> int:
    if not isinstance(checkpoint_tokens, (int, np.integer)) or not 1 <= checkpoint_tokens <= MAX_CHECKPOINT_TOKENS:
        raise ValueError(f"checkpoint_tokens must be an integer in [1, 2^20], got {checkpoint_tokens!r}")
    return int(checkpoint_tokens)


def _check_bits(check_bits) -> int:
    if check_bits not in CHECK_DTYPES:
        raise ValueError(f"check_bits must be 8, 16 or 32, got {check_bits!r}")
    return int(check_bits)


def chunk_checks(tokens: np.ndarray, checkpoint_tokens: int, check_bits: int) -> np.ndarray:
    """The low ``check_bits`` bits of the CRC32 of each chunk of ``checkpoint_tokens`` tokens."""
    crcs = [tokens_crc(tokens[i : i + checkpoint_tokens]) for i in range(0, len(tokens), checkpoint_tokens)]
    return (np.array(crcs, dtype=np.uint64) & ((1 << check_bits) - 1)).astype(CHECK_DTYPES[check_bits])


def ideal_bits(logits, tokens):
    """-log2 of the softmax probability of ``tokens`` under ``logits`` (float64, for benchmarks).

    ``logits`` is one row (n_vocab,) with an int token, or rows (n, n_vocab) with n tokens.
    """
    rows = np.asarray(logits, dtype=np.float64)
    single = rows.ndim == 1
    rows = np.atleast_2d(rows)
    picked = np.atleast_1d(np.asarray(tokens, dtype=np.int64))
    top = rows.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(rows - top).sum(axis=1)) + top[:, 0]
    bits = (log_z - rows[np.arange(len(rows)), picked]) / np.log(2.0)
    return float(bits[0]) if single else bits


class _Rows:
    """The C tables for one vocabulary (about 124 KiB), freed with the object."""

    def __init__(self, n_vocab: int):
        ffi, lib = _lib()
        handle = lib.tokm_rows_new(n_vocab)
        if handle == ffi.NULL:
            raise MemoryError("tokens_model: no memory for the frequency tables")
        self.handle = ffi.gc(handle, lib.tokm_rows_free)
        self.n_vocab = n_vocab

    def freqs(self, logits_row) -> np.ndarray:
        """Integer frequencies of a whole row: each >= 1, summing to 2^31 (tests, diagnostics)."""
        ffi, lib = _lib()
        row = _check_row(logits_row, self.n_vocab)
        freq = np.empty(self.n_vocab, dtype=np.uint32)
        rc = lib.tokm_row_freqs(self.handle, ffi.from_buffer("float[]", row), ffi.from_buffer("uint32_t[]", freq))
        if rc != 0:
            raise SeqKVError(f"tokens_model: computing row frequencies failed (C error {rc})")
        return freq


def row_frequencies(logits_row, n_vocab: int | None = None) -> np.ndarray:
    """The frequencies both coder sides derive from one logits row (each >= 1, sum 2^31)."""
    row = np.asarray(logits_row)
    return _Rows(check_n_vocab(n_vocab or row.shape[-1])).freqs(row)


class ModelTokenEncoder:
    """Records (start, freq) of each token under its logits row; ``finish()`` writes the stream."""

    def __init__(self, n_vocab: int = DEFAULT_N_VOCAB, checkpoint_tokens: int = DEFAULT_CHECKPOINT_TOKENS,
                 check_bits: int = DEFAULT_CHECK_BITS):
        self.n_vocab = check_n_vocab(n_vocab)
        self.checkpoint_tokens = _check_interval(checkpoint_tokens)
        self.check_bits = _check_bits(check_bits)
        self._rows = _Rows(self.n_vocab)
        self._ffi, self._lib = _lib()
        self._range = self._ffi.new("uint32_t[2]")
        self._starts: list[int] = []
        self._freqs: list[int] = []
        self._tokens: list[int] = []

    def __len__(self) -> int:
        return len(self._tokens)

    def add(self, logits_row, token: int) -> None:
        """Codes ``token`` (the one actually chosen) under the distribution of ``logits_row``."""
        row = _check_row(logits_row, self.n_vocab)
        if not 0 <= token < self.n_vocab:
            raise ValueError(f"token id {token} is outside [0, {self.n_vocab})")
        rc = self._lib.tokm_token_range(
            self._rows.handle, self._ffi.from_buffer("float[]", row), int(token), self._range, self._range + 1
        )
        if rc != 0:
            raise SeqKVError(f"tokens_model: coding token {token} failed (C error {rc})")
        self._starts.append(self._range[0])
        self._freqs.append(self._range[1])
        self._tokens.append(int(token))

    def finish(self) -> bytes:
        """The whole stream (header, checkpoint checks, rANS payload)."""
        tokens = np.asarray(self._tokens, dtype=np.int32)
        header = write_varint(len(tokens)) + write_varint(self.checkpoint_tokens) + bytes([self.check_bits])
        checks = chunk_checks(tokens, self.checkpoint_tokens, self.check_bits).tobytes()
        payload = self._payload() if len(tokens) else b""
        log.debug("tokens_model: %d tokens -> %d payload bytes", len(tokens), len(payload))
        return header + checks + write_varint(len(payload)) + payload

    def _payload(self) -> bytes:
        starts = np.asarray(self._starts, dtype=np.uint32)
        freqs = np.asarray(self._freqs, dtype=np.uint32)
        capacity = 4 * len(starts) + 16
        out = bytearray(capacity)
        ffi, lib = self._ffi, self._lib
        written = lib.tokm_encode_ranges(
            ffi.from_buffer("uint32_t[]", starts), ffi.from_buffer("uint32_t[]", freqs), len(starts),
            ffi.from_buffer("uint8_t[]", out), capacity,
        )
        if written < 0:
            raise SeqKVError(f"tokens_model: writing the rANS stream failed (C error {written})")
        return bytes(out[:written])


class ModelTokenDecoder:
    """Decodes one token per logits row; raises ``CorruptDataError`` on damage or desync."""

    def __init__(self, buf, n_vocab: int = DEFAULT_N_VOCAB):
        self.n_vocab = check_n_vocab(n_vocab)
        view = memoryview(buf).cast("B")
        self.n_tokens, pos = read_varint(view, 0, "tokens_model")
        self.checkpoint_tokens, pos = read_varint(view, pos, "tokens_model")
        self.check_bits = view[pos] if pos < len(view) else 0
        if not 1 <= self.checkpoint_tokens <= MAX_CHECKPOINT_TOKENS or self.check_bits not in CHECK_DTYPES:
            raise CorruptDataError(
                f"tokens_model: checkpoints of {self.checkpoint_tokens} tokens, {self.check_bits} bits in the header"
            )
        n_checks = -(-self.n_tokens // self.checkpoint_tokens)
        checks_end = pos + 1 + n_checks * self.check_bits // 8
        if checks_end > len(view):
            raise CorruptDataError(f"tokens_model: {n_checks} checkpoints do not fit in {len(view)} bytes")
        self._checks = np.frombuffer(view[pos + 1 : checks_end], dtype=CHECK_DTYPES[self.check_bits])
        payload_len, pos = read_varint(view, checks_end, "tokens_model")
        if pos + payload_len != len(view) or (self.n_tokens > 0) != (payload_len > 0):
            raise CorruptDataError(f"tokens_model: payload of {payload_len} bytes does not match the stream")
        self._payload = bytes(view[pos:])  # the C decoder reads it in place: keep it alive
        self._tokens: list[int] = []
        self._error: CorruptDataError | None = None  # once desynchronised, always
        self._decoder = self._open() if self.n_tokens else None

    def _open(self):
        ffi, lib = _lib()
        handle = lib.tokm_decoder_new(ffi.from_buffer("uint8_t[]", self._payload), len(self._payload), self.n_vocab)
        if handle == ffi.NULL:
            raise CorruptDataError("tokens_model: the rANS payload is too short (or no memory)")
        return ffi.gc(handle, lib.tokm_decoder_free)

    @property
    def payload_size(self) -> int:
        """Bytes of the rANS payload (the stream less its header and checkpoints)."""
        return len(self._payload)

    @property
    def position(self) -> int:
        """How many tokens have been decoded."""
        return len(self._tokens)

    def next(self, logits_row) -> int:
        """The next token, given the logits row the encoder saw for it."""
        if self._error is not None:
            raise self._error
        if self.position >= self.n_tokens:
            raise ValueError(f"all {self.n_tokens} tokens are already decoded")
        try:
            return self._next(logits_row)
        except CorruptDataError as exc:
            self._error = exc
            raise

    def _next(self, logits_row) -> int:
        ffi, lib = _lib()
        row = _check_row(logits_row, self.n_vocab)
        token = lib.tokm_decoder_next(self._decoder, ffi.from_buffer("float[]", row))
        if token < 0:
            raise CorruptDataError(
                f"tokens_model: the stream ends early at token {self.position} (damaged data or desync)"
            )
        self._tokens.append(int(token))
        self._check_chunk()
        return int(token)

    def _check_chunk(self) -> None:
        interval, position = self.checkpoint_tokens, self.position
        if position % interval and position != self.n_tokens:
            return
        chunk = (position - 1) // interval
        tokens = np.asarray(self._tokens[chunk * interval :], dtype=np.int32)
        if chunk_checks(tokens, interval, self.check_bits)[0] != self._checks[chunk]:
            raise CorruptDataError(
                f"tokens_model: tokens {chunk * interval}..{position - 1} fail their checkpoint CRC: the "
                "logits differ from the encoder's (other model, build or eval schedule) or the data is damaged"
            )
        if position == self.n_tokens:
            if _lib()[1].tokm_decoder_finish(self._decoder) != 0:
                raise CorruptDataError("tokens_model: the rANS stream does not end where it should (damaged data)")

    def done(self) -> None:
        """Raises ``CorruptDataError`` unless every token was decoded and checked to the stream's end."""
        if self._error is not None:
            raise self._error
        if self.position != self.n_tokens:
            missing = self.n_tokens - self.position
            raise CorruptDataError(f"tokens_model: {missing} of {self.n_tokens} tokens are not decoded yet")

    @property
    def tokens(self) -> np.ndarray:
        """The tokens decoded so far."""
        return np.asarray(self._tokens, dtype=np.int32)


@register_codec
class TokensModelCodec(ModelTokensCodec):
    """Model-coded tokens: a model is needed on both sides, so coding goes through :meth:`encoder` and
    :meth:`decoder` (one logits row per token).

    >>> codec = TokensModelCodec(n_vocab=1000)
    >>> rows = np.random.default_rng(0).standard_normal((2, 1000)).astype(np.float32)
    >>> encoder = codec.encoder()
    >>> encoder.add(rows[0], 5); encoder.add(rows[1], 6)
    >>> decoder = codec.decoder(encoder.finish())
    >>> [decoder.next(row) for row in rows]
    [5, 6]
    """

    codec_id = "tokens_model"

    def __init__(self, n_vocab: int = DEFAULT_N_VOCAB, version: int = FORMAT_VERSION,
                 checkpoint_tokens: int = DEFAULT_CHECKPOINT_TOKENS, check_bits: int = DEFAULT_CHECK_BITS):
        self.n_vocab = check_n_vocab(n_vocab)
        self.version = check_version(version, self.codec_id)
        self.checkpoint_tokens = _check_interval(checkpoint_tokens)
        self.check_bits = _check_bits(check_bits)

    def encoder(self) -> ModelTokenEncoder:
        return ModelTokenEncoder(self.n_vocab, self.checkpoint_tokens, self.check_bits)

    def decoder(self, buf) -> ModelTokenDecoder:
        return ModelTokenDecoder(buf, self.n_vocab)

    def get_config(self) -> dict:
        return {"id": self.codec_id, "n_vocab": self.n_vocab, "version": self.version,
                "checkpoint_tokens": self.checkpoint_tokens, "check_bits": self.check_bits}
