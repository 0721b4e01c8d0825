"""The codec contract shared by every codec in :mod:`seqkv_edge.codecs`.

A codec turns one kind of array (KV bytes, token ids) into bytes and back. It is described by a
JSON-safe config (``get_config()``), which the container stores beside the bytes it produced, so a
file always says how to decode itself (``from_config()`` rebuilds the codec).
"""
from __future__ import annotations

import abc
from typing import Any, ClassVar


class Codec(abc.ABC):
    """Base class: subclasses set ``codec_id`` and implement ``encode`` / ``decode``."""

    codec_id: ClassVar[str] = ""

    @abc.abstractmethod
    def encode(self, buf: Any) -> bytes:
        """The bytes of ``buf``."""

    @abc.abstractmethod
    def decode(self, buf: bytes, out: Any = None) -> Any:
        """What ``encode`` was given, written into ``out`` when one is passed."""

    def get_config(self) -> dict:
        """JSON-safe description; ``from_config(get_config())`` rebuilds an equal codec."""
        return {"id": self.codec_id}

    @classmethod
    def from_config(cls, config: dict) -> "Codec":
        params = {k: v for k, v in config.items() if k != "id"}
        return cls(**params)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "id")
        return f"{type(self).__name__}({params})"
