"""An array-backed radix trie over token ids: numba kernels and the :class:`RadixTrie` wrapper.

Every node owns one edge: a run of tokens in a shared token pool (``edge_off``, ``edge_len``).
Children are found through one open-addressing hash table keyed by ``(parent slot, first token of
the child's edge)``. Nodes are addressed from outside by stable 64-bit ids (the ids a store
persists); slots are the array indices behind them and are recycled.

>>> import numpy as np
>>> trie = RadixTrie()
>>> ids = iter(range(1, 100))
>>> a = trie.insert(np.array([1, 2, 3, 4], np.int32), lambda: next(ids))
>>> b = trie.insert(np.array([1, 2, 9], np.int32), lambda: next(ids))
>>> length, node_ids, node_ends = trie.match(np.array([1, 2, 3, 7], np.int32))
>>> length, node_ids.tolist(), node_ends.tolist()
(3, [2, 1], [2, 4])
"""
from __future__ import annotations

from typing import Callable, Iterable

import numba
import numpy as np

from ..errors import CorruptDataError

EMPTY = -1  # hash cell never used
TOMB = -2  # hash cell freed: probing continues past it
ROOT = 0  # slot and id of the root (no edge, never stored)


@numba.njit(cache=True)
def _hash(key, mask):
    x = np.uint64(key)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    return np.int64(x & np.uint64(mask))


@numba.njit(cache=True)
def _edge_key(parent_slot, token):
    return (np.int64(parent_slot) << 32) | (np.int64(token) & 0xFFFFFFFF)


@numba.njit(cache=True)
def _ht_find(keys, key):
    """Cell index holding ``key``, or -1."""
    mask = keys.shape[0] - 1
    i = _hash(key, mask)
    while True:
        k = keys[i]
        if k == key:
            return i
        if k == EMPTY:
            return -1
        i = (i + 1) & mask


@numba.njit(cache=True)
def _ht_put(keys, vals, key, val):
    """Store a key known to be absent; returns 1 when a never-used cell was consumed."""
    mask = keys.shape[0] - 1
    i = _hash(key, mask)
    while keys[i] >= 0:
        i = (i + 1) & mask
    fresh = 1 if keys[i] == EMPTY else 0
    keys[i] = key
    vals[i] = val
    return fresh


@numba.njit(cache=True)
def _rehash(old_keys, old_vals, keys, vals):
    for i in range(old_keys.shape[0]):
        if old_keys[i] >= 0:
            _ht_put(keys, vals, old_keys[i], old_vals[i])


@numba.njit(cache=True)
def _match(pool, edge_off, edge_len, keys, vals, tokens):
    """Walk ``tokens`` down the trie: (matched length, slots touched, token end of each slot)."""
    n = tokens.shape[0]
    path = np.empty(n, np.int32)
    ends = np.empty(n, np.int64)
    node, i, count = 0, 0, 0
    while i < n:
        cell = _ht_find(keys, _edge_key(node, tokens[i]))
        if cell < 0:
            break
        child = vals[cell]
        off = edge_off[child]
        length = edge_len[child]
        limit = min(length, n - i)
        j = 1
        while j < limit and pool[off + j] == tokens[i + j]:
            j += 1
        path[count] = child
        ends[count] = i + length
        count += 1
        i += j
        if j < length:
            break
        node = child
    return i, path[:count], ends[:count]


@numba.njit(cache=True)
def _link(keys, vals, parent, edge_off, n_children, pool, child_slots, parent_slots):
    """Attach children to parents; returns (index of a duplicate edge or -1, fresh cells used)."""
    fresh = 0
    for t in range(child_slots.shape[0]):
        child = child_slots[t]
        key = _edge_key(parent_slots[t], pool[edge_off[child]])
        if _ht_find(keys, key) >= 0:
            return t, fresh
        fresh += _ht_put(keys, vals, key, child)
        parent[child] = parent_slots[t]
        n_children[parent_slots[t]] += 1
    return -1, fresh


@numba.njit(cache=True)
def _unlink(keys, vals, parent, edge_off, n_children, pool, child_slots):
    for t in range(child_slots.shape[0]):
        child = child_slots[t]
        p = parent[child]
        if p < 0:
            continue
        cell = _ht_find(keys, _edge_key(p, pool[edge_off[child]]))
        if cell >= 0 and vals[cell] == child:
            keys[cell] = TOMB
            n_children[p] -= 1
        parent[child] = -1


@numba.njit(cache=True)
def _split(keys, vals, parent, edge_off, edge_len, n_children, pool, node, k, head):
    """Cut ``node``'s edge after ``k`` tokens; ``head`` takes the first part and node's place."""
    p = parent[node]
    cell = _ht_find(keys, _edge_key(p, pool[edge_off[node]]))
    vals[cell] = head
    parent[head] = p
    edge_off[head] = edge_off[node]
    edge_len[head] = k
    n_children[head] = 1
    parent[node] = head
    edge_off[node] += k
    edge_len[node] -= k
    return _ht_put(keys, vals, _edge_key(head, pool[edge_off[node]]), node)


@numba.njit(cache=True)
def _path_to_root(parent, edge_len, node):
    """Slots from the root's child down to ``node`` and their token ends; empty on a cycle."""
    count, slot = 0, node
    while slot > 0:
        count += 1
        slot = parent[slot]
        if count > parent.shape[0]:
            return np.empty(0, np.int32), np.empty(0, np.int64)
    path = np.empty(count, np.int32)
    slot = node
    for t in range(count - 1, -1, -1):
        path[t] = slot
        slot = parent[slot]
    ends = np.empty(count, np.int64)
    total = 0
    for t in range(count):
        total += edge_len[path[t]]
        ends[t] = total
    return path, ends


@numba.njit(cache=True)
def _compact(pool, edge_off, edge_len, slots, new_pool):
    used = 0
    for t in range(slots.shape[0]):
        s = slots[t]
        off = edge_off[s]
        for j in range(edge_len[s]):
            new_pool[used + j] = pool[off + j]
        edge_off[s] = used
        used += edge_len[s]
    return used


def _grown(array: np.ndarray, size: int, fill) -> np.ndarray:
    out = np.full(size, fill, dtype=array.dtype)
    out[: array.shape[0]] = array
    return out


class RadixTrie:
    """In-memory radix trie over int32 token ids; nodes are named by caller-chosen int64 ids.

    The store keeps it as its lookup index and rebuilds it from persisted rows with
    :meth:`apply`; :meth:`insert`, :meth:`split`, :meth:`add_leaf` and :meth:`remove_leaf` edit
    it directly (tests, benchmarks, single-process use).
    """

    def __init__(self, node_capacity: int = 1024, token_capacity: int = 1 << 16):
        self._pool = np.zeros(max(token_capacity, 16), np.int32)
        self._pool_used = 0
        self._live_tokens = 0
        capacity = max(node_capacity, 16)
        self._parent = np.full(capacity, -1, np.int32)
        self._edge_off = np.zeros(capacity, np.int64)
        self._edge_len = np.zeros(capacity, np.int32)
        self._n_children = np.zeros(capacity, np.int32)
        self._refs = np.zeros(capacity, np.int32)
        self._ext = np.zeros(capacity, np.int64)
        self._alive = np.zeros(capacity, np.bool_)
        self._alive[ROOT] = True
        self._n_slots = 1
        self._free: list[int] = []
        self._slot_of: dict[int, int] = {ROOT: ROOT}
        self._keys = np.full(64, EMPTY, np.int64)
        self._vals = np.zeros(64, np.int32)
        self._ht_filled = 0  # live + tombstone cells

    # ---- queries -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._slot_of) - 1

    def __contains__(self, node_id: int) -> bool:
        return int(node_id) in self._slot_of and int(node_id) != ROOT

    @property
    def token_count(self) -> int:
        """Tokens held on all edges (each shared prefix counted once)."""
        return self._live_tokens

    def match(self, tokens: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        """Longest prefix of ``tokens`` in the trie.

        Returns ``(length, node_ids, node_ends)``: the node ids from the root down, and the token
        offset where each node's edge ends. The last node is only partly matched when
        ``node_ends[-1] > length``.
        """
        length, slots, ends = _match(
            self._pool, self._edge_off, self._edge_len, self._keys, self._vals, _tokens(tokens)
        )
        return int(length), self._ext[slots], ends

    def path(self, node_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Node ids from the root down to ``node_id`` and the token end of each."""
        slot = self._slot(node_id)
        slots, ends = _path_to_root(self._parent, self._edge_len, slot)
        if slot != ROOT and slots.shape[0] == 0:
            raise CorruptDataError(f"trie node {node_id} sits on a parent cycle")
        return self._ext[slots], ends

    def path_tokens(self, node_ids: np.ndarray) -> np.ndarray:
        """The tokens spelled by a root-down path of node ids."""
        slots = [self._slot(i) for i in node_ids]
        parts = [self._pool[self._edge_off[s] : self._edge_off[s] + self._edge_len[s]] for s in slots]
        return np.concatenate(parts) if parts else np.empty(0, np.int32)

    def edge_tokens(self, node_id: int) -> np.ndarray:
        slot = self._slot(node_id)
        return self._pool[self._edge_off[slot] : self._edge_off[slot] + self._edge_len[slot]].copy()

    def parent_of(self, node_id: int) -> int:
        return int(self._ext[self._parent[self._slot(node_id)]])

    def children_count(self, node_id: int) -> int:
        return int(self._n_children[self._slot(node_id)])

    def refs(self, node_id: int) -> int:
        """Sessions that end at this node (kept by the store, 0 for plain trie use)."""
        return int(self._refs[self._slot(node_id)])

    def structure(self) -> dict[str, np.ndarray]:
        """Arrays over live nodes (root excluded): ids, parent ids, children, refs, edge lengths."""
        slots = np.flatnonzero(self._alive[: self._n_slots])
        slots = slots[slots != ROOT]
        return {
            "ids": self._ext[slots],
            "parent_ids": self._ext[self._parent[slots]],
            "n_children": self._n_children[slots].copy(),
            "refs": self._refs[slots].copy(),
            "n_tokens": self._edge_len[slots].copy(),
        }

    # ---- edits -----------------------------------------------------------------------------

    def insert(self, tokens: np.ndarray, new_id: Callable[[], int]) -> int:
        """Add a token sequence; returns the id of the node it ends at (created ids from new_id)."""
        tokens = _tokens(tokens)
        if tokens.shape[0] == 0:
            raise ValueError("cannot insert an empty token sequence")
        length, node_ids, node_ends = self.match(tokens)
        attach = ROOT
        if node_ids.shape[0]:
            attach = int(node_ids[-1])
            if node_ends[-1] > length:
                start = int(node_ends[-2]) if node_ids.shape[0] > 1 else 0
                head = new_id()
                self.split(attach, length - start, head)
                attach = head
        if length == tokens.shape[0]:
            return attach
        leaf = new_id()
        self.add_leaf(attach, tokens[length:], leaf)
        return leaf

    def split(self, node_id: int, k: int, head_id: int) -> None:
        """Cut a node's edge after ``k`` tokens: ``head_id`` takes the first ``k`` and its place."""
        slot = self._slot(node_id)
        if not 0 < k < self._edge_len[slot]:
            raise ValueError(f"split offset {k} outside node {node_id} of {self._edge_len[slot]} tokens")
        self._reserve_cells(1)
        (head,) = self._alloc(1)
        self._bind(head, head_id)
        self._ht_filled += _split(
            self._keys, self._vals, self._parent, self._edge_off, self._edge_len,
            self._n_children, self._pool, slot, k, head,
        )

    def add_leaf(self, parent_id: int, tokens: np.ndarray, node_id: int) -> None:
        self.apply([(node_id, parent_id, _tokens(tokens), 0)])

    def remove_leaf(self, node_id: int) -> None:
        slot = self._slot(node_id)
        if slot == ROOT or self._n_children[slot]:
            raise ValueError(f"node {node_id} is the root or has children")
        self.apply([], deleted=[node_id])

    def apply(self, rows: Iterable[tuple], deleted: Iterable[int] = ()) -> None:
        """Bring nodes to a persisted state: rows ``(id, parent_id, tokens, refs)`` are created or
        replaced, ``deleted`` ids are dropped. Order inside a batch does not matter.

        Raises CorruptDataError when the result is not a trie (missing parent, empty edge, two
        children of one node starting with the same token); the trie must then be reset.
        """
        rows = list(rows)
        gone = np.array([self._slot_of.pop(int(i)) for i in deleted if int(i) in self._slot_of], np.int32)
        moved = np.array([self._slot_of[int(r[0])] for r in rows if int(r[0]) in self._slot_of], np.int32)
        for slots in (gone, moved):
            _unlink(self._keys, self._vals, self._parent, self._edge_off, self._n_children, self._pool, slots)
            self._live_tokens -= int(self._edge_len[slots].sum())
        if gone.shape[0] and self._n_children[gone].any():
            raise CorruptDataError("a deleted trie node still has children")
        self._alive[gone] = False
        self._free.extend(gone.tolist())
        if not rows:
            return
        edges = [_tokens(r[2]) for r in rows]
        lengths = np.array([e.shape[0] for e in edges], np.int64)
        if lengths.min() == 0:
            raise CorruptDataError(f"trie node {rows[int(lengths.argmin())][0]} has an empty edge")
        base = self._append_tokens(np.concatenate(edges))
        slots = np.empty(len(rows), np.int32)
        fresh = [i for i, r in enumerate(rows) if int(r[0]) not in self._slot_of]
        slots[fresh] = self._alloc(len(fresh))
        for i in fresh:
            self._bind(int(slots[i]), int(rows[i][0]))
        for i, r in enumerate(rows):
            slots[i] = self._slot_of[int(r[0])]
        self._edge_off[slots] = base + np.cumsum(lengths) - lengths
        self._edge_len[slots] = lengths
        self._refs[slots] = [int(r[3]) for r in rows]
        self._live_tokens += int(lengths.sum())
        try:
            parents = np.array([self._slot_of[int(r[1])] for r in rows], np.int32)
        except KeyError as missing:
            raise CorruptDataError(f"trie node refers to missing parent {missing}") from None
        self._reserve_cells(len(rows))
        duplicate, fresh_cells = _link(
            self._keys, self._vals, self._parent, self._edge_off, self._n_children, self._pool,
            slots, parents,
        )
        self._ht_filled += fresh_cells
        if duplicate >= 0:
            raise CorruptDataError(
                f"trie nodes {rows[duplicate][0]} and a sibling both start with token "
                f"{edges[duplicate][0]} under node {rows[duplicate][1]}"
            )

    # ---- storage management ------------------------------------------------------------------

    def _slot(self, node_id: int) -> int:
        try:
            return self._slot_of[int(node_id)]
        except KeyError:
            raise KeyError(f"no trie node {node_id}") from None

    def _bind(self, slot: int, node_id: int) -> None:
        self._slot_of[node_id] = slot
        self._ext[slot] = node_id
        self._alive[slot] = True
        self._n_children[slot] = 0
        self._parent[slot] = -1

    def _alloc(self, count: int) -> np.ndarray:
        reuse = [self._free.pop() for _ in range(min(count, len(self._free)))]
        extra = count - len(reuse)
        if self._n_slots + extra > self._parent.shape[0]:
            size = max(2 * self._parent.shape[0], self._n_slots + extra)
            self._parent = _grown(self._parent, size, -1)
            for name in ("_edge_off", "_edge_len", "_n_children", "_refs", "_ext", "_alive"):
                setattr(self, name, _grown(getattr(self, name), size, 0))
        fresh = list(range(self._n_slots, self._n_slots + extra))
        self._n_slots += extra
        return np.array(reuse + fresh, np.int32)

    def _reserve_cells(self, count: int) -> None:
        """Keep the hash table at most half full (tombstones included)."""
        capacity = self._keys.shape[0]
        if 2 * (self._ht_filled + count) <= capacity:
            return
        live = int(np.count_nonzero(self._keys >= 0))
        while 4 * (live + count) > capacity:  # leave room so rehashes stay rare
            capacity *= 2
        keys = np.full(capacity, EMPTY, np.int64)
        vals = np.zeros(capacity, np.int32)
        _rehash(self._keys, self._vals, keys, vals)
        self._keys, self._vals, self._ht_filled = keys, vals, live

    def _append_tokens(self, tokens: np.ndarray) -> int:
        need = tokens.shape[0]
        if self._pool_used + need > self._pool.shape[0]:
            if self._pool_used > 2 * self._live_tokens + (1 << 16):
                self._compact_pool(need)
            if self._pool_used + need > self._pool.shape[0]:
                size = max(2 * self._pool.shape[0], self._pool_used + need)
                self._pool = _grown(self._pool, size, 0)
        base = self._pool_used
        self._pool[base : base + need] = tokens
        self._pool_used += need
        return base

    def _compact_pool(self, need: int) -> None:
        slots = np.flatnonzero(self._alive[: self._n_slots]).astype(np.int32)
        slots = slots[slots != ROOT]
        new_pool = np.zeros(max(self._pool.shape[0], 2 * (self._live_tokens + need)), np.int32)
        self._pool_used = int(_compact(self._pool, self._edge_off, self._edge_len, slots, new_pool))
        self._pool = new_pool


def _tokens(tokens) -> np.ndarray:
    array = np.ascontiguousarray(tokens, dtype=np.int32)
    if array.ndim != 1:
        raise ValueError(f"token ids must be a 1-D array, got shape {array.shape}")
    return array
