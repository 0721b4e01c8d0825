"""Layer 1, prefix deduplication: a radix trie of token prefixes and the stores that persist it.

Sessions are named token sequences; each is a path of trie nodes, and each node owns the chunk
(opaque bytes) of the tokens on its edge, so sessions that share a prefix share its chunks.

- :class:`RadixTrie` (``trie``): the in-memory index, numba kernels over arrays.
- :class:`SQLiteStore` (``sqlite_store``): default, a local directory (SQLite index + blob files).
- :class:`RedisStore` (``redis_store``): shared, ``redis://host:port/db``.
- ``eviction``: which nodes to drop under a byte budget.

:func:`open_store` picks the backend from a location.
"""
from __future__ import annotations

import os

from .base import DEFAULT_RECOMPUTE_S_PER_TOKEN, SessionStore
from .records import (
    CheckReport,
    NodeStats,
    PayloadFn,
    PrefixMatch,
    PutResult,
    SessionRecord,
    SplitFn,
    StoreStats,
)
from .sqlite_store import SQLiteStore
from .trie import RadixTrie


def open_store(location: str | os.PathLike, **options) -> SessionStore:
    """A :class:`RedisStore` for ``redis://`` / ``rediss://`` URLs, else a :class:`SQLiteStore`
    in the directory ``location``. ``options`` go to the store's constructor."""
    text = os.fspath(location)
    if text.startswith(("redis://", "rediss://", "unix://")):
        from .redis_store import RedisStore

        return RedisStore(text, **options)
    return SQLiteStore(text, **options)


def __getattr__(name):
    # the redis client is optional: import it only when the Redis backend is asked for
    if name == "RedisStore":
        from .redis_store import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CheckReport",
    "DEFAULT_RECOMPUTE_S_PER_TOKEN",
    "NodeStats",
    "PayloadFn",
    "PrefixMatch",
    "PutResult",
    "RadixTrie",
    "RedisStore",
    "SQLiteStore",
    "SessionRecord",
    "SessionStore",
    "SplitFn",
    "StoreStats",
    "open_store",
]
