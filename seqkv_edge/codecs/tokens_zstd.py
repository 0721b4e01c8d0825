"""Token ids as little-endian int32 in one zstd frame: the tokens of KV snapshot files.

There the KV payload outweighs the tokens thousands of times, so their coder is chosen for speed:
``tokens_portable`` saves about a byte per two tokens but models every id, which a restore would wait for
(``benchmarks/RESULTS.md``). Format version 1: one zstd frame that states its size, of ``4 * n`` bytes.

>>> import numpy as np
>>> codec = TokensZstdCodec(n_vocab=151936)
>>> tokens = np.array([791, 4062, 13876, 38835, 34208, 916, 279, 15678, 5562, 13], dtype=np.int32)
>>> bool((codec.decode(codec.encode(tokens)) == tokens).all())
True
"""
from __future__ import annotations

import numpy as np

from ..errors import CorruptDataError
from .base import TokensCodec
from .registry import register_codec
from .tokens_portable import check_n_vocab, check_tokens
from .zstd_bytes import ZstdCodec

FORMAT_VERSION = 1
LEVEL = 3  # higher levels gain a few percent of a few kilobytes and cost milliseconds per save

__all__ = ["TokensZstdCodec"]


@register_codec
class TokensZstdCodec(TokensCodec):
    """Lossless codec for token ids at memory speed. Ids outside ``[0, n_vocab)`` raise ``ValueError`` when encoding
    and ``CorruptDataError`` when decoding, as does damaged input."""

    codec_id = "tokens_zstd"

    def __init__(self, n_vocab: int, version: int = FORMAT_VERSION):
        if version != FORMAT_VERSION:
            raise CorruptDataError(f"{self.codec_id} format version {version!r} is not supported (this build reads "
                                   f"{FORMAT_VERSION}); the file was written by a newer seqkv_edge")
        self.n_vocab, self.version = check_n_vocab(n_vocab), version

    def encode(self, tokens) -> bytes:
        return ZstdCodec(level=LEVEL).encode(check_tokens(tokens, self.n_vocab).astype("<i4").tobytes())

    def decode(self, buf, *, max_tokens: int | None = None) -> np.ndarray:
        """The tokens of a stream; one that states more than ``max_tokens`` tokens is refused before anything is
        allocated."""
        data = ZstdCodec().decode(buf, max_size=None if max_tokens is None else 4 * max_tokens)
        if len(data) % 4:
            raise CorruptDataError(f"{self.codec_id}: {len(data)} bytes are not a whole number of token ids")
        tokens = np.frombuffer(data, "<i4").astype(np.int32)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.n_vocab):
            raise CorruptDataError(f"{self.codec_id}: a token id lies outside [0, {self.n_vocab}) (damaged data)")
        return tokens

    def get_config(self) -> dict:
        return {"id": self.codec_id, "n_vocab": self.n_vocab, "version": self.version}
