"""The codec contracts: one base and three kinds, each implemented in full by every registered codec.

A codec is described by a JSON-safe config (``get_config()``), which the container stores beside the bytes it
produced, so a file always says how to decode itself (``codecs.get_codec(config)`` rebuilds the codec). What it
codes decides its kind:

- :class:`BytesCodec`: bytes to bytes (``zstd``);
- :class:`TokensCodec`: token ids to bytes and back, no model needed (``tokens_portable``, ``tokens_zstd``);
- :class:`ModelTokensCodec`: token ids coded under the model's next-token logits, one row per token, so decoding
  replays the model (``tokens_model``);
- :class:`StateCodec`: every K/V tensor of a parsed llama.cpp state, one payload per tensor (``kv_lossless``,
  ``kv_lossy``).

>>> from seqkv_edge.codecs import get_codec
>>> codec = get_codec({"id": "zstd", "level": 3})
>>> isinstance(codec, BytesCodec), codec.decode(codec.encode(b"abc" * 100)) == b"abc" * 100
(True, True)
"""
from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar, Iterable


class Codec(abc.ABC):
    """Base of every codec: a ``codec_id`` and a JSON-safe config that rebuilds an equal codec."""

    codec_id: ClassVar[str] = ""

    def get_config(self) -> dict:
        """JSON-safe description; ``from_config(get_config())`` rebuilds an equal codec."""
        return {"id": self.codec_id}

    @classmethod
    def from_config(cls, config: dict) -> Codec:
        params = {k: v for k, v in config.items() if k != "id"}
        return cls(**params)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "id")
        return f"{type(self).__name__}({params})"


class BytesCodec(Codec):
    """Bytes to bytes."""

    @abc.abstractmethod
    def encode(self, data) -> bytes:
        """The coded form of ``data`` (any bytes-like object)."""

    @abc.abstractmethod
    def decode(self, buf, *, max_size: int | None = None) -> bytes:
        """The bytes ``encode`` was given; a stream holding more than ``max_size`` bytes is refused
        (``CorruptDataError``) before anything is allocated."""


class TokensCodec(Codec):
    """Token ids to bytes and back, with no model."""

    @abc.abstractmethod
    def encode(self, tokens) -> bytes:
        """The coded form of ``tokens`` (a 1-D array or sequence of ids)."""

    @abc.abstractmethod
    def decode(self, buf, *, max_tokens: int | None = None):
        """The tokens as an int32 array; a stream holding more than ``max_tokens`` is refused
        (``CorruptDataError``) before anything is allocated."""


class ModelTokensCodec(Codec):
    """Token ids coded under the model's logits: each token costs about -log2 p(token).

    The encoder takes each token with the logits row the model gave for it (``add(row, token)``) and writes the
    stream (``finish() -> bytes``); the decoder takes the same rows one at a time (``next(row) -> token``) and
    ``done()`` checks that the whole stream was decoded.
    """

    @abc.abstractmethod
    def encoder(self) -> Any:
        """A fresh encoder: ``add(logits_row, token)`` per token, then ``finish() -> bytes``."""

    @abc.abstractmethod
    def decoder(self, buf) -> Any:
        """A decoder of the stream ``buf``: ``next(logits_row) -> token`` per token, then ``done()``."""


class StateCodec(Codec):
    """Every K/V tensor of a parsed llama.cpp sequence state, one payload per tensor.

    ``rope`` (``state.rope.rope_params(llm)``) and ``profile`` (a KV profile of the model) are passed to every
    state codec; a codec whose payloads depend on the model's heads and RoPE sets ``needs_model``, and only then
    do callers have to compute them (and keep the saved ``rope`` to decode with).
    """

    needs_model: ClassVar[bool] = False

    @abc.abstractmethod
    def encode_state(self, state, rope: dict | None = None, profile=None) -> list[bytes]:
        """One payload per tensor of ``state`` (a ``state.blob.SeqState``), in ``state.tensors()`` order."""

    def encode_state_iter(self, state, rope: dict | None = None, profile=None) -> Iterable[bytes]:
        """The payloads of :meth:`encode_state`, in order; a codec whose config is known before it codes may yield
        each as soon as it is coded, so that a writer writes it while the next ones are coded."""
        return self.encode_state(state, rope, profile=profile)

    @abc.abstractmethod
    def decode_state(self, payloads: Sequence, tensors: Sequence, positions, rope: dict | None = None,
                     profile=None) -> None:
        """Fill ``tensors`` (the writable views of ``state.blob.skeleton_layout``) from ``payloads``.

        ``positions`` holds the int32 cell positions of each stream with cells, in section and stream order.
        Raises ``CorruptDataError`` when the payloads are damaged or describe other tensors.
        """
