"""The session store: named sessions over a persisted radix trie whose nodes own payload chunks.

A session is a token sequence; the store keeps it as a path of trie nodes, each owning the chunk
(opaque bytes: coded tokens + coded KV) of the tokens on its edge. Sessions that share a prefix
share its nodes. The trie lives in the backend (SQLite table, Redis hashes); every process keeps
an in-memory :class:`~seqkv_edge.store.trie.RadixTrie` as its lookup index and brings it up to
date from the backend's change log whenever the store's generation counter moved (checked once
per operation).

Writes are optimistic: a plan is built against the generation the process has seen, payload
callbacks run outside any lock, and the backend commits the plan atomically only if the
generation is unchanged; otherwise the store catches up and plans again (reusing chunks it
already computed).
"""
from __future__ import annotations

import collections
import contextlib
import logging
import secrets
import threading
import time
import uuid
from typing import Iterator, Sequence

import numpy as np

from ..checksum import crc32
from ..errors import CorruptDataError, SeqKVError, StoreFullError, StoreUnavailableError
from .backend import StoreBackend
from .eviction import eviction_scores, plan_eviction
from .integrity import trie_problems
from .records import (
    CheckReport,
    Conflict,
    NodeRow,
    NodeStats,
    PayloadFn,
    PrefixMatch,
    PutResult,
    SessionRecord,
    SplitFn,
    StoreStats,
    WritePlan,
)
from .trie import ROOT, RadixTrie

log = logging.getLogger(__name__)

DEFAULT_RECOMPUTE_S_PER_TOKEN = 1 / 80  # DESIGN §3: re-prefill runs at 70-85 tokens/s on 2 cores
_MAX_ATTEMPTS = 64


class SessionStore(StoreBackend):
    """Base class of the backends; all public operations live here.

    Args:
        split_payload: re-slices a node's chunk when a new session diverges inside it (see
            :data:`~seqkv_edge.store.records.SplitFn`). Without it, a put that needs a split
            raises :class:`SeqKVError`.
        budget_bytes: keep stored payload bytes under this; ``put_session`` evicts the nodes that
            save the least recompute time per byte, or raises ``StoreFullError`` when the
            new session cannot fit.
        lookup_staleness_s: ``longest_prefix`` checks for other processes' writes at most this
            often (0: on every call). Every other operation always checks.
    """

    def __init__(
        self,
        split_payload: SplitFn | None = None,
        budget_bytes: int | None = None,
        lookup_staleness_s: float = 0.0,
    ):
        self._split_payload = split_payload
        self.budget_bytes = budget_bytes
        self.lookup_staleness_s = lookup_staleness_s
        self._checked_at = -float("inf")
        self._lock = threading.RLock()
        self._trie = RadixTrie()
        self._uid = ""
        self._gen = -1
        self._bytes = 0

    # ---- lookups --------------------------------------------------------------------------

    def longest_prefix(self, tokens: np.ndarray) -> PrefixMatch:
        """The longest stored prefix of ``tokens`` and the nodes whose chunks hold it."""
        with self._lock:
            if time.monotonic() - self._checked_at >= self.lookup_staleness_s:
                self._refresh()
            length, node_ids, node_ends = self._trie.match(tokens)
        return PrefixMatch(length, node_ids, node_ends)

    def get_session(self, name: str) -> SessionRecord:
        """The tokens and node path of a stored session; KeyError when there is none."""
        with self._lock:
            for _ in range(3):
                self._refresh()
                found = self._session(name)
                if found is None:
                    raise KeyError(f"no session named {name!r}")
                end, n_tokens = found
                if end in self._trie:
                    break
            else:
                raise CorruptDataError(f"session {name!r} ends at node {end}, which is not stored")
            node_ids, node_ends = self._trie.path(end)
            tokens = self._trie.path_tokens(node_ids)
        if tokens.shape[0] != n_tokens:
            raise CorruptDataError(
                f"session {name!r} should hold {n_tokens} tokens, its nodes hold {tokens.shape[0]}"
            )
        return SessionRecord(name, tokens, node_ids, node_ends)

    def get_payloads(self, node_ids: Sequence[int]) -> list[bytes]:
        """The chunks of the given nodes, checksums verified; counts a hit on each.

        Raises KeyError when a node is gone (evicted or deleted since it was looked up).
        """
        with self._lock:
            return self._payloads([int(i) for i in node_ids], time.time())

    @contextlib.contextmanager
    def pin(self, node_ids: Sequence[int], ttl_s: float = 300.0) -> Iterator[None]:
        """Keep nodes from eviction and deletion, in every process, while the block runs
        (at most ``ttl_s`` seconds, so a crashed reader cannot pin them forever)."""
        token = uuid.uuid4().hex
        with self._lock:  # backends share one connection between threads: one transaction at a time
            self._lease([int(i) for i in node_ids], token, time.time() + ttl_s)
        try:
            yield
        finally:
            with self._lock:
                self._release(token)

    def list_sessions(self) -> list[str]:
        with self._lock:
            return sorted(self._sessions())

    def node_stats(self, node_ids: Sequence[int]) -> list[NodeStats]:
        with self._lock:
            rows = self._node_rows([int(i) for i in node_ids])
        missing = [i for i in node_ids if int(i) not in rows]
        if missing:
            raise KeyError(f"no trie nodes {missing}")
        return [rows[int(i)].stats() for i in node_ids]

    def stats(self) -> StoreStats:
        with self._lock:
            self._refresh()
            return StoreStats(self._session_count(), len(self._trie), self._bytes, self._trie.token_count)

    # ---- writes ---------------------------------------------------------------------------

    def put_session(
        self,
        name: str,
        tokens: np.ndarray,
        payload: PayloadFn,
        *,
        surprisal_bits: np.ndarray | None = None,
        recompute_s: np.ndarray | float = DEFAULT_RECOMPUTE_S_PER_TOKEN,
    ) -> PutResult:
        """Store (or replace) a session, sharing every node of its longest stored prefix.

        ``payload(start, end)`` is called for the new tokens only, at most once per range.
        ``surprisal_bits`` (per token, -log2 P_M(token | prefix)) and ``recompute_s`` (per token,
        or one figure for all) weight the nodes for eviction; without surprisals every token
        counts one bit.
        """
        if not isinstance(name, str) or not name:
            raise ValueError("a session name must be a non-empty string")
        tokens = np.ascontiguousarray(tokens, dtype=np.int32)
        if tokens.ndim != 1 or tokens.shape[0] == 0:
            raise ValueError(f"session {name!r}: tokens must be a non-empty 1-D array, got {tokens.shape}")
        weights = _per_token(surprisal_bits, tokens.shape[0], "surprisal_bits")
        costs = _per_token(recompute_s, tokens.shape[0], "recompute_s")
        chunks: dict = {}
        return self._retry(lambda: self._plan_put(name, tokens, payload, weights, costs, chunks))

    def delete_session(self, name: str) -> None:
        """Forget a session and drop the nodes no other session needs (KeyError if unknown)."""
        self._retry(lambda: self._plan_delete(name))

    def gc(self) -> int:
        """Drop nodes no session ends at or passes through; clean backend leftovers.

        Returns the number of nodes dropped.
        """
        dropped = self._retry(self._plan_gc)
        with self._lock:
            self._housekeeping()
        return dropped

    def evict(self, budget_bytes: int) -> list[str]:
        """Drop nodes (and the sessions ending at them) until payloads fit in ``budget_bytes``.

        Returns the names of the evicted sessions. Pinned nodes and nodes with children stay, so
        the result can stay above budget.
        """
        return list(self._retry(lambda: self._plan_evict_to(budget_bytes)))

    # ---- integrity ------------------------------------------------------------------------

    def check(self, deep: bool = True) -> CheckReport:
        """Verify the store; raises CorruptDataError listing every problem found.

        Checks that nodes form a trie (parents exist, no cycles, no duplicate edges), that session
        records and reference counts agree with it, the byte total, and with ``deep`` that every
        chunk is present with its length and CRC. Backend checks run too (SQLite
        ``integrity_check``; orphan blobs left by a crashed writer are removed and counted).
        """
        with self._lock, self._exclusive():
            orphans = self._remove_orphans()
            stored_bytes, rows, sessions = self._snapshot()
            problems = trie_problems(rows, sessions, stored_bytes)
            if deep:
                problems += self._verify_payloads(rows)
            problems += self._backend_problems()
        if problems:
            shown = "; ".join(problems[:20])
            more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
            raise CorruptDataError(f"store integrity check failed: {shown}{more}")
        return CheckReport(len(rows), len(sessions), stored_bytes, orphans)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- planning -------------------------------------------------------------------------

    def _retry(self, plan_fn):
        """Plan against the current generation and commit; re-plan when another writer won."""
        with self._lock:
            for _ in range(_MAX_ATTEMPTS):
                self._refresh()
                try:
                    plan, result = plan_fn()
                except Conflict:
                    continue
                if plan is None:
                    return result
                try:
                    self._gen, self._bytes = self._commit(plan)
                except Conflict:
                    continue
                try:
                    self._trie.apply([r.structure() for r in plan.changed_rows()], plan.deletes)
                except (CorruptDataError, KeyError):
                    log.warning("in-memory trie out of step after a commit; reloading it")
                    self._gen = -1
                return result
        raise StoreUnavailableError(
            f"gave up writing after {_MAX_ATTEMPTS} attempts: other writers kept changing the store"
        )

    def _plan_put(self, name, tokens, payload, weights, costs, chunks):
        plan = WritePlan(self._gen, time.time())
        n_tokens = tokens.shape[0]
        length, node_ids, node_ends = self._trie.match(tokens)
        path, ends = [int(i) for i in node_ids], [int(e) for e in node_ends]
        split_node = None
        if path and ends[-1] > length:
            split_node = path[-1]
            start = ends[-2] if len(path) > 1 else 0
            path[-1] = self._plan_split(plan, split_node, start, length - start, weights, costs, chunks)
            ends[-1] = length
        plan.touches.update(i for i in path if i not in plan.inserts)
        attach = path[-1] if path else ROOT
        if length < n_tokens:
            key = ("chunk", length, n_tokens)
            if key not in chunks:
                chunks[key] = _as_bytes(payload(length, n_tokens), f"payload({length}, {n_tokens})")
            leaf = _new_row(attach, tokens[length:], chunks[key], plan.now)
            leaf.weight = _segment(weights, length, n_tokens)
            leaf.recompute_s = _segment(costs, length, n_tokens, 0.0)
            leaf.refs = 1
            plan.inserts[leaf.id] = (leaf, chunks[key])
            path.append(leaf.id)
            ends.append(n_tokens)
        else:
            self._add_ref(plan, attach, +1)
        end = path[-1]
        keep = set(path) | ({split_node} if split_node is not None else set())
        previous = self._session(name)
        if previous is not None:
            self._add_ref(plan, previous[0], -1)
            self._drop_chain(plan, previous[0], self._live_leases(), keep)
        plan.put_sessions[name] = (end, n_tokens)
        evicted = self._fit_budget(plan, keep, name)
        result = PutResult(np.array(path, np.int64), np.array(ends, np.int64), length, evicted)
        return plan, result

    def _plan_split(self, plan, node, start, k, weights, costs, chunks) -> int:
        """Plan cutting ``node`` after ``k`` tokens; returns the id of the new head node."""
        if self._split_payload is None:
            raise SeqKVError(
                f"storing this session needs node {node} split at token {start + k}, but the store "
                "was opened without split_payload; pass the container's chunk splitter"
            )
        row = self._row(plan, node)
        node_len = int(row.tokens.shape[0])
        key = ("split", node, row.crc, k)
        if key not in chunks:
            try:
                (whole,) = self._payloads([node], None)
            except KeyError:
                raise Conflict() from None  # deleted by another writer: plan again
            head, tail = self._split_payload(whole, start, k, node_len)
            chunks[key] = (_as_bytes(head, "split head"), _as_bytes(tail, "split tail"))
        head_bytes, tail_bytes = chunks[key]
        head = _new_row(row.parent, row.tokens[:k], head_bytes, plan.now)
        share = k / node_len  # without per-token figures, split in proportion to tokens
        head.weight = _segment(weights, start, start + k, row.weight * share)
        head.recompute_s = _segment(costs, start, start + k, row.recompute_s * share)
        head.hits = row.hits + 1
        row.parent, row.tokens = head.id, row.tokens[k:]
        row.weight = max(row.weight - head.weight, 0.0)
        row.recompute_s = max(row.recompute_s - head.recompute_s, 0.0)
        row.nbytes, row.crc = len(tail_bytes), crc32(tail_bytes)
        plan.inserts[head.id] = (head, head_bytes)
        plan.updates[node] = (row, tail_bytes)
        return head.id

    def _plan_delete(self, name):
        found = self._session(name)
        if found is None:
            raise KeyError(f"no session named {name!r}")
        plan = WritePlan(self._gen, time.time())
        plan.del_sessions.add(name)
        self._add_ref(plan, found[0], -1)
        self._drop_chain(plan, found[0], self._live_leases(), set())
        return plan, None

    def _plan_gc(self):
        structure = self._trie.structure()
        unused = structure["ids"][(structure["n_children"] == 0) & (structure["refs"] == 0)]
        if unused.shape[0] == 0:
            return None, 0
        plan = WritePlan(self._gen, time.time())
        leased = self._live_leases()
        for node in unused:
            self._drop_chain(plan, int(node), leased, set())
        return (plan if plan.deletes else None), len(plan.deletes)

    def _plan_evict_to(self, budget_bytes: int):
        plan = WritePlan(self._gen, time.time())
        evicted = self._evict(plan, self._bytes - int(budget_bytes), set(), None)
        return (plan if plan.deletes else None), evicted

    def _fit_budget(self, plan: WritePlan, keep: set, name: str) -> tuple[str, ...]:
        if self.budget_bytes is None:
            return ()
        total = self._bytes + plan.bytes_delta
        if total <= self.budget_bytes:
            return ()
        over = total - self.budget_bytes
        evicted = self._evict(plan, over, keep, name)
        if self._bytes + plan.bytes_delta > self.budget_bytes:
            raise StoreFullError(
                f"store full: storing session {name!r} goes {over} bytes over the budget of "
                f"{self.budget_bytes} and no more than {total - self._bytes - plan.bytes_delta} "
                "can be evicted (the rest is pinned, has children or is the new session itself); "
                "raise budget_bytes or delete sessions"
            )
        return evicted

    def _evict(self, plan: WritePlan, need_bytes: int, keep: set, name: str | None) -> tuple[str, ...]:
        """Add the cheapest-to-lose nodes to ``plan`` until ``need_bytes`` are freed."""
        if need_bytes <= 0:
            return ()
        structure = self._trie.structure()
        stats = self._all_stats()
        order = np.argsort(stats["ids"])
        found = np.searchsorted(stats["ids"], structure["ids"], sorter=order)
        at = order[np.minimum(found, len(order) - 1)] if len(order) else found
        if len(order) != len(found) or not np.array_equal(stats["ids"][at], structure["ids"]):
            raise Conflict()  # nodes changed since the refresh: plan again
        refs = structure["refs"].copy()
        for node_id, (row, _) in plan.updates.items():
            refs[structure["ids"] == node_id] = row.refs
        gone = np.isin(structure["ids"], list(plan.deletes))
        children = structure["n_children"].copy()
        for node_id in plan.deletes:
            children[structure["ids"] == self._trie.parent_of(node_id)] -= 1
        live = ~gone
        nbytes = stats["nbytes"][at]
        victims, _ = plan_eviction(
            structure["ids"][live], structure["parent_ids"][live], children[live], refs[live],
            nbytes[live],
            eviction_scores(stats["weight"][at], stats["hits"][at], stats["recompute_s"][at], nbytes)[live],
            stats["last_use"][at][live], need_bytes, protected=keep | self._live_leases(),
        )
        sessions = self._sessions_ending_at(victims)
        for node_id in victims:
            plan.updates.pop(node_id, None)
            plan.deletes[node_id] = int(nbytes[np.flatnonzero(structure["ids"] == node_id)[0]])
        evicted = tuple(sorted(s for names in sessions.values() for s in names if s != name))
        plan.del_sessions.update(evicted)
        return evicted

    def _add_ref(self, plan: WritePlan, node: int, delta: int) -> None:
        if node == ROOT:
            return
        if node in plan.inserts:
            plan.inserts[node][0].refs += delta
        else:
            row = self._row(plan, node)
            row.refs += delta
            plan.updates.setdefault(node, (row, None))

    def _drop_chain(self, plan: WritePlan, node: int, leased: set, keep: set) -> None:
        """Delete ``node`` and its ancestors while no session, child or reader needs them."""
        lost_children = collections.Counter()
        for deleted in plan.deletes:
            lost_children[self._trie.parent_of(deleted)] += 1
        while node != ROOT and node not in keep and node not in leased and node not in plan.deletes:
            refs = self._row(plan, node).refs if node in plan.updates else self._trie.refs(node)
            if refs or self._trie.children_count(node) - lost_children[node]:
                return
            plan.updates.pop(node, None)
            plan.deletes[node] = self._row_bytes(plan, node)
            node = self._trie.parent_of(node)
            lost_children[node] += 1

    def _row(self, plan: WritePlan, node: int) -> NodeRow:
        """The node's persisted row, as changed so far by ``plan``."""
        if node in plan.updates:
            return plan.updates[node][0]
        row = self._node_rows([node]).get(node)
        if row is None:
            raise Conflict()  # deleted by another writer after our refresh
        plan.stored_bytes[node] = row.nbytes
        return row

    def _row_bytes(self, plan: WritePlan, node: int) -> int:
        if node not in plan.stored_bytes:
            self._row(plan, node)
        return plan.stored_bytes[node]

    # ---- keeping the in-memory trie current ----------------------------------------------

    def _refresh(self) -> None:
        self._checked_at = time.monotonic()
        uid, gen, stored_bytes = self._meta()
        if uid == self._uid and gen == self._gen:
            return
        since = self._gen if uid == self._uid and 0 <= self._gen <= gen else None
        uid, gen, stored_bytes, rows, deleted, full = self._changes(since)
        if full:
            self._trie = RadixTrie(node_capacity=2 * len(rows) + 16)
        try:
            self._trie.apply(rows, deleted)
        except (CorruptDataError, KeyError):
            if full:
                raise
            log.warning("change log did not apply cleanly; reloading the whole trie")
            uid, gen, stored_bytes, rows, deleted, _ = self._changes(None)
            self._trie = RadixTrie(node_capacity=2 * len(rows) + 16)
            self._trie.apply(rows, deleted)
        self._uid, self._gen, self._bytes = uid, gen, stored_bytes


def _new_row(parent: int, tokens: np.ndarray, payload: bytes, now: float) -> NodeRow:
    # random 62-bit ids need no coordination between writers; backends refuse a collision
    return NodeRow(
        id=secrets.randbits(62) + 1, parent=parent, tokens=np.array(tokens, np.int32), refs=0,
        nbytes=len(payload), crc=crc32(payload), hits=1, last_use=now,
    )


def _segment(per_token: np.ndarray | None, start: int, end: int, default: float | None = None) -> float:
    """Sum of a per-token figure over [start, end); ``default`` (or one per token) without one."""
    if per_token is not None:
        return float(per_token[start:end].sum())
    return float(end - start) if default is None else float(default)


def _per_token(values, n_tokens: int, what: str) -> np.ndarray | None:
    if values is None:
        return None
    array = np.asarray(values, np.float64)
    if array.ndim == 0:
        return np.full(n_tokens, float(array), np.float64)
    if array.shape != (n_tokens,):
        raise ValueError(f"{what} must hold one value per token ({n_tokens}), got shape {array.shape}")
    return array


def _as_bytes(value, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must return bytes, got {type(value).__name__}")
    return bytes(value)
