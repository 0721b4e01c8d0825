"""The codec registry: ``register_codec`` makes a codec class reachable from its ``codec_id``; ``get_codec(config)``
rebuilds any registered codec from the config stored beside the bytes it produced."""
from __future__ import annotations

import inspect

from ..errors import CorruptDataError
from .base import BytesCodec, Codec, ModelTokensCodec, StateCodec, TokensCodec

KINDS = (BytesCodec, TokensCodec, ModelTokensCodec, StateCodec)

_REGISTRY: dict[str, type[Codec]] = {}


def register_codec(cls: type[Codec]) -> type[Codec]:
    """Class decorator: make ``cls`` (a complete codec of one kind in ``base``) reachable from its ``codec_id``."""
    if not cls.codec_id:
        raise ValueError(f"{cls.__name__} has no codec_id")
    if sum(issubclass(cls, kind) for kind in KINDS) != 1 or inspect.isabstract(cls):
        raise ValueError(f"{cls.__name__} must implement exactly one codec kind of seqkv_edge.codecs.base in full")
    if _REGISTRY.get(cls.codec_id, cls) is not cls:
        raise ValueError(f"codec id {cls.codec_id!r} is already registered")
    _REGISTRY[cls.codec_id] = cls
    return cls


def get_codec(config: dict) -> Codec:
    """Rebuild a codec from ``config`` (as returned by ``Codec.get_config``)."""
    codec_id = config.get("id") if isinstance(config, dict) else None
    if not isinstance(codec_id, str) or codec_id not in _REGISTRY:
        raise CorruptDataError(
            f"unknown codec {codec_id!r} (known: {sorted(_REGISTRY)}); "
            "the file was written by a newer seqkv_edge or is damaged"
        )
    try:
        return _REGISTRY[codec_id].from_config(config)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # the constructor refused a field
        raise CorruptDataError(f"the stored config of codec {codec_id!r} is damaged: {exc}") from None


def registered_codecs() -> list[str]:
    return sorted(_REGISTRY)
