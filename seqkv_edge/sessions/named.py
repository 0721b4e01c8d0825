"""Named sessions in a session store: tokens always kept, KV snapshots deduplicated and evictable.

A named session has two parts (DESIGN §1, "how the tiers compose"):

- its **tokens**, in a small per-session record (the *catalog*: files under ``<store>/named/``
  for a SQLite store, a Redis hash beside a Redis store's keys) with the model fingerprint and
  cache layout it was saved with. Records are never evicted: they are the session.
- its **KV snapshot**, a session of the same name in the prefix store (``seqkv_edge.store``),
  chunked by :mod:`seqkv_edge.container.chunks` so sessions sharing a prefix share its chunks. The store
  may evict it under its byte budget.

:func:`load_named` restores the longest stored KV prefix of the session's tokens (its own
snapshot when present, else any other session's shared prefix) and replays the remaining tokens
with a batched prefill. A full snapshot restores bit-exactly; a replayed tail is equivalent, not
bit-identical, to the original schedule (DESIGN §3).

A store serves one model and cache layout: the first save records them (the store *identity*),
later saves and loads with another model raise :class:`ModelMismatchError`.

>>> store = open_session_store("sessions/")                      # doctest: +SKIP
>>> llm.eval(llm.tokenize(b"A long shared document ..."))        # doctest: +SKIP
>>> save_named(llm, store, "chat-1").new_bytes                   # doctest: +SKIP
>>> load_named(llm2, store, "chat-1").restored_tokens            # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
import types
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__
from ..checksum import crc32
from ..codecs.tokens_portable import TokensPortableCodec
from ..container import meta_schema
from ..container.chunks import ChunkCodec, complete_prefix, default_codec, split_payload
from ..errors import (
    CorruptDataError,
    ModelMismatchError,
    SeqKVError,
    StoreFullError,
    StoreUnavailableError,
)
from ..fileio import atomic_write, fsync_dir
from ..fingerprint import model_fingerprint
from ..state.blob import max_cell_bytes, parse_seq_state, read_seq_state
from ..state.swa import write_state
from ..store import SessionStore, open_store
from .base import SessionInfo, rollback_on_failure, set_tokens
from .prefill import Progress, prefill
from .timing import Clock

log = logging.getLogger(__name__)

CACHE_PREFIX = "llama-cache/"  # store sessions written by SeqKVCache (not named sessions)
_RECORD_MAGIC = b"SKVN"
_RECORD_VERSION = 1
_RECORD_SCHEMA = {"n_tokens": meta_schema.COUNT, "n_vocab": meta_schema.COUNT,
                  "model": meta_schema.SESSION_META["model"], "cache": meta_schema.SESSION_META["cache"]}
_MAX_RECORD_TOKENS = 1 << 24  # above any model's context: a larger count is damage, refused before allocating


def open_session_store(location, *, budget_bytes: int | None = None, n_threads: int | None = None,
                       **options) -> SessionStore:
    """Open (or pass through) a store wired with the chunk splitter named sessions need."""
    if isinstance(location, SessionStore):
        return location
    splitter = split_payload if n_threads is None else ChunkCodec(n_threads).split
    return open_store(location, split_payload=splitter, budget_bytes=budget_bytes, **options)


def is_session_name(target) -> bool:
    """``Llama.save_session``/``load_session`` argument rule: a plain string without a path
    separator that does not end in ``.seqkv`` names a session in the store; the rest are files."""
    if not isinstance(target, str) or not target:
        return False
    return not any(sep and sep in target for sep in ("/", os.sep, os.altsep)) and not target.endswith(".seqkv")


# ---- model identity ----------------------------------------------------------------------

def model_identity(llm) -> dict:
    """What KV chunks depend on: the model (fingerprint) and the cache layout of the context."""
    from ..state.blob import model_arch
    from .snapshot import live_cache_layout

    return {
        "model": {"fingerprint": model_fingerprint(llm.model_path), "arch": model_arch(llm),
                  "name": llm.metadata.get("general.name", ""), "path": str(llm.model_path)},
        "cache": live_cache_layout(llm),
    }


def identity_digest(identity: dict) -> bytes:
    """8 bytes every chunk carries: a chunk made under another identity is refused on restore."""
    key = json.dumps([identity["model"]["fingerprint"], identity["cache"]], sort_keys=True).encode()
    return hashlib.sha256(key).digest()[:8]


def bind_store(store: SessionStore, llm) -> bytes:
    """Check (or, on first use, record) that ``store`` serves ``llm``'s model and cache layout;
    returns the identity digest for chunks."""
    from .snapshot import check_model

    identity = model_identity(llm)
    catalog = Catalog.of(store)
    recorded = catalog.identity()
    if recorded is None:
        catalog.set_identity(identity)
        recorded = catalog.identity() or identity  # another process may have won the race
    meta = {"model": recorded.get("model", {}), "cache": recorded.get("cache", {}), "n_tokens": 0}
    try:
        check_model(_as_container(meta), llm, f"session store {_where(store)}")
    except ModelMismatchError as error:
        raise ModelMismatchError(f"{error} A store serves one model and cache layout: open another store "
                                 "location for this one.") from None
    return identity_digest(identity)


def _as_container(meta: dict):
    """``session.check_model`` reads only a container's ``meta``."""
    return types.SimpleNamespace(meta=meta)


def _where(store) -> str:
    return str(getattr(store, "path", None) or getattr(store, "url", None) or type(store).__name__)


# ---- the catalog: per-session token records ----------------------------------------------

def _pack_record(meta: dict, coded_tokens: bytes) -> bytes:
    head = json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()
    body = _RECORD_MAGIC + bytes([_RECORD_VERSION]) + struct.pack("<I", len(head)) + head + coded_tokens
    return body + struct.pack("<I", crc32(body))


def _unpack_record(data: bytes, name: str) -> tuple[dict, np.ndarray]:
    buf = memoryview(data)
    if len(buf) < 13 or bytes(buf[:4]) != _RECORD_MAGIC or crc32(buf[:-4]) != struct.unpack_from("<I", buf, len(buf) - 4)[0]:
        raise CorruptDataError(f"the record of session {name!r} is damaged (bad magic or checksum)")
    if buf[4] != _RECORD_VERSION:
        raise CorruptDataError(f"session {name!r} has record version {buf[4]}; this seqkv_edge reads {_RECORD_VERSION}")
    (n,) = struct.unpack_from("<I", buf, 5)
    try:
        meta = json.loads(bytes(buf[9:9 + n]))
    except (ValueError, RecursionError) as exc:
        raise CorruptDataError(f"the record of session {name!r} is not valid JSON ({type(exc).__name__})") from None
    meta_schema.check(meta, _RECORD_SCHEMA, f"session {name!r}", "record")
    if not 1 <= meta["n_vocab"] <= 1 << 24 or meta["n_tokens"] > _MAX_RECORD_TOKENS:
        raise CorruptDataError(f"the record of session {name!r} claims {meta['n_tokens']} tokens of a "
                               f"{meta['n_vocab']}-token vocabulary")
    tokens = TokensPortableCodec(n_vocab=meta["n_vocab"]).decode(buf[9 + n:-4], max_tokens=meta["n_tokens"])
    tokens = np.asarray(tokens, dtype=np.int32)
    if tokens.shape[0] != meta["n_tokens"]:
        raise CorruptDataError(f"session {name!r}: {tokens.shape[0]} tokens decoded, the record says {meta['n_tokens']}")
    return meta, tokens


class Catalog:
    """The per-session records (tokens + model) and the store identity, beside a store's data."""

    @staticmethod
    def of(store: SessionStore) -> "Catalog":
        if getattr(store, "key_prefix", None) is not None:
            return _RedisCatalog(store.client, store.key_prefix)
        if getattr(store, "path", None) is not None:
            return _DirCatalog(Path(store.path) / "named")
        raise SeqKVError(f"named sessions need a SQLiteStore or RedisStore, got {type(store).__name__}")

    def put(self, name: str, meta: dict, tokens: np.ndarray) -> None:
        coded = TokensPortableCodec(n_vocab=meta["n_vocab"]).encode(tokens)
        self._put(name, _pack_record(meta, coded))

    def get(self, name: str) -> tuple[dict, np.ndarray] | None:
        data = self._get(name)
        return None if data is None else _unpack_record(data, name)

    def identity(self) -> dict | None:
        data = self._get_identity()
        return None if data is None else json.loads(data)

    def set_identity(self, identity: dict) -> None:
        self._set_identity_if_absent(json.dumps(identity, sort_keys=True).encode())


class _DirCatalog(Catalog):
    def __init__(self, directory: Path):
        self.dir = directory

    def _file(self, name: str) -> Path:
        return self.dir / (urllib.parse.quote(name, safe="") + ".rec")

    def _put(self, name: str, data: bytes) -> None:
        atomic_write(self._file(name), data)  # creates the folder

    def _get(self, name: str) -> bytes | None:
        try:
            return self._file(name).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> bool:
        try:
            self._file(name).unlink()
            return True
        except FileNotFoundError:
            return False

    def names(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(urllib.parse.unquote(p.name[:-4]) for p in self.dir.glob("*.rec"))

    def _get_identity(self) -> bytes | None:
        try:
            return (self.dir / "identity.json").read_bytes()
        except FileNotFoundError:
            return None

    def _set_identity_if_absent(self, data: bytes) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".identity.", suffix=".tmp")  # unique per writer
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, self.dir / "identity.json")  # atomic, and fails when another writer was first
            fsync_dir(self.dir)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)


class _RedisCatalog(Catalog):
    def __init__(self, client, prefix: str):
        self.r, self.key, self.identity_key = client, prefix + "named", prefix + "identity"

    def _call(self, what: str, fn, *args):
        import redis

        try:
            return fn(*args)
        except redis.RedisError as error:
            raise StoreUnavailableError(f"{what} in Redis: {error}") from error

    def _put(self, name, data):
        self._call("saving a session record", self.r.hset, self.key, name, data)

    def _get(self, name):
        return self._call("reading a session record", self.r.hget, self.key, name)

    def delete(self, name) -> bool:
        return bool(self._call("deleting a session record", self.r.hdel, self.key, name))

    def names(self) -> list[str]:
        return sorted(n.decode() for n in self._call("listing sessions", self.r.hkeys, self.key))

    def _get_identity(self):
        return self._call("reading the store identity", self.r.get, self.identity_key)

    def _set_identity_if_absent(self, data):
        self._call("recording the store identity", self.r.set, self.identity_key, data, None, None, True)


# ---- save and load -----------------------------------------------------------------------

def save_named(llm, store: SessionStore, name: str, *, codec: ChunkCodec | None = None) -> SessionInfo:
    """Save ``llm``'s sequence 0 as session ``name``: its tokens record, then its KV chunks
    (deduplicated against every stored prefix). Replaces a session of the same name."""
    if not isinstance(name, str) or not name or name.startswith(CACHE_PREFIX):
        raise ValueError(f"a session name must be a non-empty string not starting with {CACHE_PREFIX!r}")
    clock = Clock()
    n = llm.n_tokens
    if n == 0:
        raise SeqKVError(f"saving session {name!r}: the context holds no tokens yet; evaluate or generate first")
    digest = bind_store(store, llm)
    blob = read_seq_state(llm.ctx)
    state = parse_seq_state(blob, model=llm)
    tokens = np.array(llm.input_ids[:n], dtype=np.int32)
    chunks = (codec or default_codec()).session_chunks(state, tokens, llm.n_vocab(), digest)
    clock.lap("read_state")
    identity = model_identity(llm)
    meta = {**identity, "name": name, "n_tokens": n, "n_vocab": llm.n_vocab(), "seqkv_edge": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    Catalog.of(store).put(name, meta, tokens)
    clock.lap("save_tokens")
    info = SessionInfo(name, n, raw_bytes=len(blob), where="store")
    try:
        result = store.put_session(name, tokens, chunks.payload)
        info.reused_tokens = result.reused_tokens
    except StoreFullError as error:
        log.warning("session %r: tokens saved, KV snapshot not stored: %s", name, error)
        info.kv_stored = False
    info.stored_bytes = chunks.payload_bytes
    clock.lap("save_kv")
    info.seconds = clock.seconds
    return info


def session_tokens(llm, store: SessionStore, name: str) -> np.ndarray:
    """The tokens of session ``name``, checked against ``llm``'s model (KeyError when unknown)."""
    from .snapshot import check_model

    found = Catalog.of(store).get(name)
    if found is not None:
        meta, tokens = found
        check_model(_as_container(meta), llm, f"session {name!r}")
        return tokens
    try:  # a store session without a record (e.g. written by SeqKVCache): its tokens are in the trie
        return store.get_session(name).tokens
    except KeyError:
        raise KeyError(f"no session named {name!r} in {_where(store)}") from None


def fetch_prefix(store: SessionStore, tokens: np.ndarray, digest: bytes, codec: ChunkCodec | None = None,
                 min_length: int = 1, max_cell_bytes: int | None = None) -> tuple[int, bytearray | None]:
    """The longest stored KV prefix of ``tokens`` as a seq-0 state blob: ``(length, blob)``,
    ``(0, None)`` when none of at least ``min_length`` tokens is stored. Pass ``max_cell_bytes``
    (``state.max_cell_bytes(llm)``) so damaged chunks cannot ask for more memory than the context holds."""
    codec = codec or default_codec()
    for _ in range(3):  # nodes evicted between the lookup and the read: look up again
        match = store.longest_prefix(tokens)
        if match.length < max(min_length, 1):
            return 0, None
        try:
            payloads = store.get_payloads(match.node_ids)
        except KeyError:
            continue
        length, ends = match.length, list(match.node_ends)
        usable = complete_prefix(payloads, length)  # sliding-window caches: only up to a stored session end
        if usable < len(payloads):
            payloads, ends = payloads[:usable], ends[:usable]
            length = ends[-1] if ends else 0
            if length < max(min_length, 1):
                return 0, None
        blob, kv_tokens = codec.rebuild(payloads, length, digest, node_ends=ends, max_cell_bytes=max_cell_bytes)
        if not np.array_equal(kv_tokens, tokens[:length]):
            raise CorruptDataError("stored KV chunks hold other tokens than the trie path that leads to them")
        return length, blob
    return 0, None


def restore_blob(llm, blob, tokens: np.ndarray) -> None:
    """Load a seq-0 blob of ``tokens`` into ``llm``; the caller rolls back on failure (``rollback_on_failure``)."""
    write_state(llm, blob)
    set_tokens(llm, tokens)


def load_named(llm, store: SessionStore, name: str, *, codec: ChunkCodec | None = None,
               progress: Progress = None) -> SessionInfo:
    """Restore session ``name`` into ``llm`` (sequence 0): the longest stored KV prefix of its
    tokens, then a batched prefill of the rest (all of it when every snapshot was evicted). On any failure the
    context is left as it was."""
    clock = Clock()
    tokens = session_tokens(llm, store, name)
    n = tokens.shape[0]
    if n > llm.n_ctx():
        raise ModelMismatchError(f"session {name!r} holds {n} tokens but this context has n_ctx={llm.n_ctx()}")
    digest = bind_store(store, llm)
    clock.lap("read_tokens")
    length, blob = fetch_prefix(store, tokens, digest, codec, max_cell_bytes=max_cell_bytes(llm))
    clock.lap("decode")
    info = SessionInfo(name, n, raw_bytes=len(blob) if blob is not None else 0, where="store",
                       restored_tokens=length, restored_by="store" if length == n else "store and prefill")
    with rollback_on_failure(llm):
        if blob is not None:
            restore_blob(llm, blob, tokens[:length])
        else:
            llm.reset()
        clock.lap("set_state")
        if length < n:
            prefill(llm, tokens[length:], progress)
            info.replayed_tokens = n - length
            clock.lap("replay")
    info.seconds = clock.seconds
    return info


def delete_named(store: SessionStore, name: str) -> None:
    """Forget session ``name``: its record and its KV snapshot (KeyError when neither exists)."""
    had_record = Catalog.of(store).delete(name)
    try:
        store.delete_session(name)
    except KeyError:
        if not had_record:
            raise KeyError(f"no session named {name!r} in {_where(store)}") from None


def list_named(store: SessionStore) -> list[dict]:
    """Every session: named ones (with a record) and cache entries; ``kv_tokens`` is how many of
    its tokens a restore would take from stored KV (the rest would be replayed)."""
    catalog = Catalog.of(store)
    stored = set(store.list_sessions())
    rows = []
    for name in catalog.names():
        meta, tokens = catalog.get(name)
        kv = store.longest_prefix(tokens).length
        rows.append({"name": name, "kind": "named", "n_tokens": meta["n_tokens"], "kv_tokens": kv,
                     "own_snapshot": name in stored, "created": meta.get("created", "")})
    for name in sorted(stored - set(catalog.names())):
        record = store.get_session(name)
        rows.append({"name": name, "kind": "cache" if name.startswith(CACHE_PREFIX) else "store",
                     "n_tokens": int(record.tokens.shape[0]), "kv_tokens": int(record.tokens.shape[0]),
                     "own_snapshot": True, "created": ""})
    return rows
