"""Codecs: everything that turns KV tensors or tokens into bytes and back (the contracts in ``base``, the registry in
``registry``). Importing the package registers the built-in codecs."""
from __future__ import annotations

from .base import BytesCodec, Codec, ModelTokensCodec, StateCodec, TokensCodec
from .registry import get_codec, register_codec, registered_codecs

__all__ = ["Codec", "BytesCodec", "TokensCodec", "ModelTokensCodec", "StateCodec", "register_codec", "get_codec",
           "registered_codecs"]

# the built-in codecs register themselves on import
from . import kv_lossless, kv_lossy, tokens_model, tokens_portable, tokens_zstd, zstd_bytes  # noqa: E402,F401
