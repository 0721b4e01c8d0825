"""The index of a :class:`~seqkv_edge.store.sqlite_store.SQLiteStore` (``<dir>/index.sqlite3``): its schema,
and a fresh connection put in the mode the store works in (WAL, the store's ``synchronous`` level)."""
from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path

from ..errors import StoreUnavailableError

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    one INTEGER PRIMARY KEY CHECK (one = 1), version INTEGER NOT NULL, uid TEXT NOT NULL,
    gen INTEGER NOT NULL, bytes INTEGER NOT NULL, tomb_floor INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY, parent INTEGER NOT NULL, tokens BLOB NOT NULL, refs INTEGER NOT NULL,
    weight REAL NOT NULL, recompute_s REAL NOT NULL, nbytes INTEGER NOT NULL, crc INTEGER NOT NULL,
    hits INTEGER NOT NULL, last_use REAL NOT NULL, ver INTEGER NOT NULL, gen INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS nodes_by_gen ON nodes (gen);
CREATE TABLE IF NOT EXISTS tombstones (id INTEGER PRIMARY KEY, gen INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS tombstones_by_gen ON tombstones (gen);
CREATE TABLE IF NOT EXISTS sessions (
    name TEXT PRIMARY KEY, end_id INTEGER NOT NULL, n_tokens INTEGER NOT NULL, saved REAL NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_by_end ON sessions (end_id);
CREATE TABLE IF NOT EXISTS leases (
    token TEXT NOT NULL, node_id INTEGER NOT NULL, pid INTEGER NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS leases_by_token ON leases (token);
"""

NODE_COLUMNS = "id, parent, tokens, refs, weight, recompute_s, nbytes, crc, hits, last_use"


def prepare_index(db: sqlite3.Connection, *, durable: bool, timeout_s: float, where: Path) -> None:
    """WAL journal and ``synchronous`` FULL (``durable``) or NORMAL. Two processes opening a fresh store at once
    can get "database is locked" on the switch to WAL at once, without SQLite's busy handler (it will not wait
    on a lock upgrade that could deadlock): retried until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as error:
            busy = getattr(error, "sqlite_errorcode", sqlite3.SQLITE_BUSY) == sqlite3.SQLITE_BUSY  # Python >= 3.11
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    if mode.lower() != "wal":
        raise StoreUnavailableError(f"{where}: SQLite refused WAL mode (got {mode!r})")
    db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")


def create_schema(db: sqlite3.Connection) -> int:
    """The tables and the meta row where missing (inside a write transaction); the schema version the index
    holds."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute("INSERT OR IGNORE INTO meta VALUES (1, ?, ?, 0, 0, 0)", (SCHEMA_VERSION, uuid.uuid4().hex))
    return db.execute("SELECT version FROM meta").fetchone()[0]
