"""The default embedded store: a directory with an SQLite index (WAL) and one blob file per chunk.

Layout::

    <dir>/index.sqlite3     meta (uid, generation, byte total), nodes, tombstones, sessions, leases
                            (schema: store/sqlite_index.py)
    <dir>/blobs/<xx>/<node id>.<version>   one node's chunk, never overwritten
    <dir>/tmp/              chunks being written

Crash safety: a writer takes SQLite's write lock (``BEGIN IMMEDIATE``), writes each chunk to
``tmp/``, fsyncs it, renames it to its final (never reused) name, fsyncs the directory, then
commits the index rows that reference it; replaced and deleted chunks are unlinked only after the
commit. A kill at any point leaves either the old index with some unreferenced files, or the new
index with every file it names. Unreferenced files are removed on open, under the write lock, so
no live writer's files are touched. Several processes may read and write at once: readers never
block (WAL), writers queue on the lock. Reading takes no lock at all, so read hits are kept in
memory and written with the process's next save (or after 5 s, or on close).

>>> import tempfile, numpy as np
>>> store = SQLiteStore(tempfile.mkdtemp())
>>> tokens = np.arange(6, dtype=np.int32)
>>> store.put_session("chat", tokens, lambda start, end: tokens[start:end].tobytes()).reused_tokens
0
>>> match = store.longest_prefix(np.array([0, 1, 2, 9], np.int32))
>>> match.length, len(store.get_payloads(match.node_ids)[0])
(3, 24)
"""
from __future__ import annotations

import logging
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import CorruptDataError, SeqKVError, StoreUnavailableError
from .base import SessionStore
from .chunk_files import ChunkFiles, fsync_dir
from .records import Conflict, NodeRow, SplitFn, WritePlan
from .sqlite_index import NODE_COLUMNS, SCHEMA_VERSION, create_schema, prepare_index

log = logging.getLogger(__name__)

TOMBSTONES_KEPT = 10_000  # generations a lagging process can catch up on without a full reload
TOUCH_FLUSH_S = 5.0  # longest a process keeps read hits before writing them
_IN_CHUNK = 500  # ids per "IN (...)" query



class SQLiteStore(SessionStore):
    """Session store in a local directory (created if missing).

    Args:
        path: the store directory.
        split_payload, budget_bytes: see :class:`~seqkv_edge.store.base.SessionStore`.
        durable: fsync chunks and their directory before committing, and commit with
            ``synchronous=FULL``, so a power cut loses nothing committed. Without it a process
            kill is still safe; a power cut may lose the last sessions, never consistency.
        timeout_s: how long to wait for another process's write lock.
        lookup_staleness_s: see the base class; the check costs ~5 µs here, so 0 by default.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        split_payload: SplitFn | None = None,
        budget_bytes: int | None = None,
        durable: bool = True,
        timeout_s: float = 30.0,
        lookup_staleness_s: float = 0.0,
    ):
        super().__init__(split_payload, budget_bytes, lookup_staleness_s)
        self.path = Path(path)
        self.durable = durable
        self._crash_hook = None  # tests: called with a stage name at each step of a commit
        self._pid = os.getpid()
        self._pending_use: dict[int, tuple[int, float]] = {}  # node id -> (hits, last use)
        self._pending_since = time.time()
        try:
            self._files = ChunkFiles(self.path, durable, self._stage)
            self._db = sqlite3.connect(
                self.path / "index.sqlite3", timeout=timeout_s, isolation_level=None,
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as error:
            raise StoreUnavailableError(f"cannot open session store at {self.path}: {error}") from error
        with self._guard("opening the index"):
            prepare_index(self._db, durable=durable, timeout_s=timeout_s, where=self.path)
            with self._write():
                version = create_schema(self._db)
        if version != SCHEMA_VERSION:
            raise SeqKVError(
                f"{self.path} holds a version {version} store; this seqkv_edge reads version "
                f"{SCHEMA_VERSION}"
            )
        removed = self._remove_orphans()
        if removed:
            log.info("removed %d chunk files a crashed writer left in %s", removed, self.path)
        self._refresh()

    def close(self) -> None:
        with self._lock:
            try:
                self._flush_use()
            finally:
                self._db.close()

    # ---- transactions and errors --------------------------------------------------------

    @contextmanager
    def _guard(self, what: str):
        try:
            yield
        except sqlite3.OperationalError as error:
            raise StoreUnavailableError(f"session store {self.path}: {what} failed: {error}") from error
        except sqlite3.DatabaseError as error:
            raise CorruptDataError(f"session store {self.path}: index damaged ({what}): {error}") from error

    @contextmanager
    def _write(self):
        """A write transaction: holds SQLite's write lock from the start (BEGIN IMMEDIATE).
        Inside another transaction of this store it just joins it."""
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def _read(self):
        """A read transaction: one consistent snapshot across several queries."""
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            if self._db.in_transaction:
                self._db.execute("COMMIT")

    @contextmanager
    def _exclusive(self):
        with self._guard("locking the store for a check"), self._write():
            yield

    def _stage(self, name: str) -> None:
        if self._crash_hook is not None:
            self._crash_hook(name)

    # ---- reading the index --------------------------------------------------------------

    def _meta(self):
        with self._guard("reading the generation"):
            return self._db.execute("SELECT uid, gen, bytes FROM meta").fetchone()

    def _changes(self, since):
        with self._guard("loading the trie"), self._read():
            uid, gen, stored_bytes, floor = self._db.execute(
                "SELECT uid, gen, bytes, tomb_floor FROM meta"
            ).fetchone()
            full = since is None or since < floor
            where, args = ("", ()) if full else (" WHERE gen > ?", (since,))
            rows = [
                (node_id, parent, np.frombuffer(tokens, "<i4"), refs)
                for node_id, parent, tokens, refs in self._db.execute(
                    "SELECT id, parent, tokens, refs FROM nodes" + where, args
                )
            ]
            deleted = [] if full else [
                node_id for (node_id,) in self._db.execute(
                    "SELECT id FROM tombstones WHERE gen > ?", (since,)
                )
            ]
        return uid, gen, stored_bytes, rows, deleted, full

    def _node_rows(self, node_ids):
        found = {}
        with self._guard("reading nodes"):
            for part in _chunks(node_ids):
                marks = ",".join("?" * len(part))
                for record in self._db.execute(
                    f"SELECT {NODE_COLUMNS} FROM nodes WHERE id IN ({marks})", part
                ):
                    row = found[record[0]] = _row(record)
                    if row.id in self._pending_use:  # this process's hits not yet written
                        hits, last = self._pending_use[row.id]
                        row.hits, row.last_use = row.hits + hits, max(row.last_use, last)
        return found

    def _session(self, name):
        with self._guard("reading a session"):
            return self._db.execute(
                "SELECT end_id, n_tokens FROM sessions WHERE name = ?", (name,)
            ).fetchone()

    def _sessions(self):
        with self._guard("listing sessions"):
            return [name for (name,) in self._db.execute("SELECT name FROM sessions")]

    def _session_count(self):
        with self._guard("counting sessions"):
            return self._db.execute("SELECT count(*) FROM sessions").fetchone()[0]

    def _sessions_ending_at(self, node_ids):
        found: dict[int, list[str]] = {}
        with self._guard("reading sessions"):
            for part in _chunks(node_ids):
                marks = ",".join("?" * len(part))
                for end, name in self._db.execute(
                    f"SELECT end_id, name FROM sessions WHERE end_id IN ({marks})", part
                ):
                    found.setdefault(end, []).append(name)
        return found

    def _all_stats(self):
        with self._guard("reading node statistics"):
            records = self._db.execute(
                "SELECT id, weight, hits, last_use, nbytes, recompute_s FROM nodes"
            ).fetchall()
        table = np.array(records, np.float64).reshape(-1, 6)
        ids = np.array([r[0] for r in records], np.int64)
        for k, node_id in enumerate(ids.tolist()):  # this process's hits not yet written
            if node_id in self._pending_use:
                hits, last = self._pending_use[node_id]
                table[k, 2] += hits
                table[k, 3] = max(table[k, 3], last)
        names = ("weight", "hits", "last_use", "nbytes", "recompute_s")
        return {"ids": ids, **{name: table[:, i + 1] for i, name in enumerate(names)}}

    def _snapshot(self):
        with self._guard("reading the whole store"), self._read():
            (stored_bytes,) = self._db.execute("SELECT bytes FROM meta").fetchone()
            rows = [_row(r) for r in self._db.execute(f"SELECT {NODE_COLUMNS} FROM nodes")]
            sessions = {
                name: (end, n) for name, end, n in self._db.execute(
                    "SELECT name, end_id, n_tokens FROM sessions"
                )
            }
        return stored_bytes, rows, sessions

    # ---- chunks -------------------------------------------------------------------------

    def _payloads(self, node_ids, touch_at):
        # Chunk files are never rewritten in place (a new version gets a new name), so a file
        # read after the index named it holds exactly that version; it can only have vanished
        # because a writer deleted the node since, which a second look at the index tells.
        with self._guard("reading chunks"):
            rows = self._versions(node_ids)
        chunks = []
        for node_id in node_ids:
            try:
                chunks.append(self._files.read(node_id, *rows[node_id]))
            except CorruptDataError:
                with self._guard("reading chunks"):
                    current = self._versions([node_id])[node_id]  # KeyError: deleted meanwhile
                if current != rows[node_id]:
                    raise KeyError(f"trie node {node_id} was re-sliced while it was read") from None
                raise
        if touch_at is not None:
            self._note_use(node_ids, touch_at)
        return chunks

    def _note_use(self, node_ids, now: float) -> None:
        """Hits are advisory: gather them and write them with this process's next commit (or
        after TOUCH_FLUSH_S), so reading never takes the write lock."""
        for node_id in node_ids:
            hits, _ = self._pending_use.get(node_id, (0, 0.0))
            self._pending_use[node_id] = (hits + 1, now)
        if now - self._pending_since >= TOUCH_FLUSH_S:
            self._flush_use()

    def _flush_use(self) -> None:
        if self._pending_use:
            with self._guard("recording hits"), self._write():
                self._write_use(self._pending_use)
            self._pending_use.clear()
        self._pending_since = time.time()

    def _write_use(self, use: dict[int, tuple[int, float]]) -> None:
        self._db.executemany(
            "UPDATE nodes SET hits = hits + ?, last_use = max(last_use, ?) WHERE id = ?",
            [(hits, last, node_id) for node_id, (hits, last) in use.items()],
        )

    def _versions(self, node_ids) -> dict[int, tuple[int, int, int]]:
        rows = {}
        for part in _chunks(node_ids):
            marks = ",".join("?" * len(part))
            for node_id, ver, nbytes, crc in self._db.execute(
                f"SELECT id, ver, nbytes, crc FROM nodes WHERE id IN ({marks})", part
            ):
                rows[node_id] = (ver, nbytes, crc)
        missing = [i for i in node_ids if i not in rows]
        if missing:
            raise KeyError(f"trie nodes {missing} are not stored (evicted or deleted)")
        return rows

    def _verify_payloads(self, rows):
        problems = []
        versions = {}
        with self._guard("reading chunk versions"):
            for node_id, ver in self._db.execute("SELECT id, ver FROM nodes"):
                versions[node_id] = ver
        for row in rows:
            try:
                self._files.read(row.id, versions.get(row.id, -1), row.nbytes, row.crc)
            except (CorruptDataError, StoreUnavailableError) as error:
                problems.append(str(error))
        return problems

    # ---- committing -------------------------------------------------------------------

    def _commit(self, plan: WritePlan):
        written: list[Path] = []
        obsolete: list[Path] = []
        dirs: set[Path] = set()
        try:
            with self._guard("saving"), self._write():
                gen, stored_bytes = self._db.execute("SELECT gen, bytes FROM meta").fetchone()
                if gen != plan.expected_gen:
                    raise Conflict()
                if plan.deletes and set(plan.deletes) & self._live_leases():
                    raise Conflict()
                new_gen = gen + 1
                self._write_nodes(plan, new_gen, written, obsolete, dirs)
                self._write_sessions(plan)
                stored_bytes += plan.bytes_delta
                self._db.execute("UPDATE meta SET gen = ?, bytes = ?", (new_gen, stored_bytes))
                if self.durable:
                    for directory in dirs:
                        fsync_dir(directory)
                self._stage("before_commit")
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        self._pending_use.clear()
        self._stage("after_commit")
        for path in obsolete:
            path.unlink(missing_ok=True)
        return new_gen, stored_bytes

    def _write_nodes(self, plan, gen, written, obsolete, dirs) -> None:
        for node_id, (row, payload) in plan.inserts.items():
            written.append(self._files.write(node_id, 0, payload, dirs))
            try:
                self._db.execute(
                    "INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
                    (node_id, row.parent, _token_bytes(row.tokens), row.refs, row.weight,
                     row.recompute_s, row.nbytes, row.crc, row.hits, row.last_use, gen),
                )
            except sqlite3.IntegrityError:
                raise Conflict() from None  # a random id collided: plan again with new ids
            self._db.execute("DELETE FROM tombstones WHERE id = ?", (node_id,))
        for node_id, (row, payload) in plan.updates.items():
            found = self._db.execute("SELECT ver FROM nodes WHERE id = ?", (node_id,)).fetchone()
            if found is None:
                raise Conflict()
            version = found[0]
            if payload is not None:
                obsolete.append(self._files.path(node_id, version))
                version += 1
                written.append(self._files.write(node_id, version, payload, dirs))
            self._db.execute(
                "UPDATE nodes SET parent = ?, tokens = ?, refs = ?, weight = ?, recompute_s = ?, "
                "nbytes = ?, crc = ?, ver = ?, gen = ? WHERE id = ?",
                (row.parent, _token_bytes(row.tokens), row.refs, row.weight, row.recompute_s,
                 row.nbytes, row.crc, version, gen, node_id),
            )
        for node_id in plan.deletes:
            found = self._db.execute("SELECT ver FROM nodes WHERE id = ?", (node_id,)).fetchone()
            if found is None:
                raise Conflict()
            obsolete.append(self._files.path(node_id, found[0]))
            self._db.execute("DELETE FROM nodes WHERE id = ?", (node_id,))
            self._db.execute("INSERT OR REPLACE INTO tombstones VALUES (?, ?)", (node_id, gen))
        use = dict(self._pending_use)
        for node_id in plan.touches:
            use[node_id] = (use.get(node_id, (0, 0.0))[0] + 1, plan.now)
        self._write_use({i: u for i, u in use.items() if i not in plan.deletes})

    def _write_sessions(self, plan: WritePlan) -> None:
        self._db.executemany("DELETE FROM sessions WHERE name = ?", [(n,) for n in plan.del_sessions])
        self._db.executemany(
            "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?)",
            [(name, end, n, plan.now) for name, (end, n) in plan.put_sessions.items()],
        )

    # ---- leases -------------------------------------------------------------------------

    def _live_leases(self):
        now = time.time()
        with self._guard("reading leases"):
            records = self._db.execute(
                "SELECT node_id, pid FROM leases WHERE expires > ?", (now,)
            ).fetchall()
        alive = {pid: _pid_alive(pid) for pid in {pid for _, pid in records}}
        return {node_id for node_id, pid in records if alive[pid]}

    def _lease(self, node_ids, token, expires):
        with self._guard("pinning nodes"), self._write():
            self._db.executemany(
                "INSERT INTO leases VALUES (?, ?, ?, ?)",
                [(token, i, self._pid, expires) for i in node_ids],
            )

    def _release(self, token):
        with self._guard("unpinning nodes"), self._write():
            self._db.execute("DELETE FROM leases WHERE token = ?", (token,))

    # ---- maintenance ------------------------------------------------------------------

    def _remove_orphans(self) -> int:
        """Delete chunk files no index row names (left by writers killed before commit)."""
        with self._guard("removing orphan chunks"), self._write():
            referenced = self._db.execute("SELECT id, ver FROM nodes").fetchall()
            return self._files.remove_unreferenced(referenced)

    def _housekeeping(self) -> None:
        now = time.time()
        with self._guard("cleaning up"), self._write():
            records = self._db.execute("SELECT DISTINCT pid FROM leases").fetchall()
            dead = [pid for (pid,) in records if not _pid_alive(pid)]
            self._db.execute("DELETE FROM leases WHERE expires <= ?", (now,))
            self._db.executemany("DELETE FROM leases WHERE pid = ?", [(pid,) for pid in dead])
            gen, floor = self._db.execute("SELECT gen, tomb_floor FROM meta").fetchone()
            if gen - floor > TOMBSTONES_KEPT:
                floor = gen - TOMBSTONES_KEPT
                self._db.execute("DELETE FROM tombstones WHERE gen <= ?", (floor,))
                self._db.execute("UPDATE meta SET tomb_floor = ?", (floor,))
        self._remove_orphans()

    def _backend_problems(self):
        with self._guard("checking the index"):
            verdict = [r[0] for r in self._db.execute("PRAGMA integrity_check")]
        return [] if verdict == ["ok"] else [f"SQLite integrity_check: {'; '.join(verdict)}"]


def _row(record) -> NodeRow:
    node_id, parent, tokens, refs, weight, recompute_s, nbytes, crc, hits, last_use = record
    return NodeRow(
        node_id, parent, np.frombuffer(tokens, "<i4").astype(np.int32), refs, weight,
        recompute_s, nbytes, crc, hits, last_use,
    )


def _token_bytes(tokens: np.ndarray) -> bytes:
    return np.ascontiguousarray(tokens, "<i4").tobytes()


def _chunks(items, size: int = _IN_CHUNK):
    items = [int(i) for i in items]
    return [items[i : i + size] for i in range(0, len(items), size)]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
