"""Plain records exchanged between the session store, its backends and its callers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

PayloadFn = Callable[[int, int], bytes]
"""``payload(start, end)``: the chunk bytes (coded tokens + coded KV) of session tokens [start, end)."""

SplitFn = Callable[[bytes, int, int, int], "tuple[bytes, bytes]"]
"""``split(payload, node_start, k, node_len)``: re-slice the chunk of a node that spans tokens
[node_start, node_start + node_len) into the chunks of its first ``k`` tokens and of the rest."""


@dataclass(frozen=True)
class PrefixMatch:
    """The longest stored prefix of a token sequence.

    ``node_ids`` run from the root down; ``node_ends[i]`` is the token offset where node ``i``
    ends. When ``partial`` is true the last node holds more tokens than matched: its chunk covers
    tokens ``[node_ends[-2], node_ends[-1])`` and the caller keeps the first part of it.
    """

    length: int
    node_ids: np.ndarray
    node_ends: np.ndarray

    @property
    def partial(self) -> bool:
        return bool(self.node_ends.shape[0]) and int(self.node_ends[-1]) > self.length


@dataclass(frozen=True)
class SessionRecord:
    """A stored session: its tokens and the root-down nodes whose chunks compose it."""

    name: str
    tokens: np.ndarray
    node_ids: np.ndarray
    node_ends: np.ndarray


@dataclass(frozen=True)
class PutResult:
    node_ids: np.ndarray
    node_ends: np.ndarray
    reused_tokens: int  # tokens already stored before this put (deduplicated)
    evicted_sessions: tuple[str, ...]  # sessions dropped to stay within the byte budget


@dataclass(frozen=True)
class NodeStats:
    node_id: int
    parent_id: int
    n_tokens: int
    weight_bits: float  # d_T: sum of -log2 P_M(token | prefix) over the node's tokens
    hits: int
    last_use: float  # unix seconds
    nbytes: int
    recompute_s: float
    sessions: int  # sessions that end at this node


@dataclass(frozen=True)
class StoreStats:
    sessions: int
    nodes: int
    payload_bytes: int
    tokens: int  # distinct stored tokens (shared prefixes counted once)


@dataclass(frozen=True)
class CheckReport:
    nodes: int
    sessions: int
    payload_bytes: int
    orphans_removed: int  # blobs a crashed writer left behind, removed by the check


@dataclass
class NodeRow:
    """A node as backends persist it."""

    id: int
    parent: int
    tokens: np.ndarray
    refs: int
    weight: float = 0.0
    recompute_s: float = 0.0
    nbytes: int = 0
    crc: int = 0
    hits: int = 0
    last_use: float = 0.0

    def structure(self) -> tuple[int, int, np.ndarray, int]:
        return self.id, self.parent, self.tokens, self.refs

    def stats(self) -> NodeStats:
        return NodeStats(
            self.id, self.parent, int(self.tokens.shape[0]), self.weight, self.hits,
            self.last_use, self.nbytes, self.recompute_s, self.refs,
        )


@dataclass
class WritePlan:
    """One atomic change of a store, checked against the generation it was planned on.

    Backends write it all or nothing, bump the generation, and refuse it (``Conflict``) when the
    store's generation is no longer ``expected_gen`` or a node to delete has a live lease.
    """

    expected_gen: int
    now: float
    inserts: dict[int, tuple[NodeRow, bytes]] = field(default_factory=dict)
    updates: dict[int, tuple[NodeRow, "bytes | None"]] = field(default_factory=dict)
    deletes: dict[int, int] = field(default_factory=dict)  # node id -> its stored bytes
    touches: set[int] = field(default_factory=set)  # hits + 1, last use = now
    put_sessions: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (end, n)
    del_sessions: set[str] = field(default_factory=set)
    stored_bytes: dict[int, int] = field(default_factory=dict)  # bytes of nodes before the plan

    @property
    def bytes_delta(self) -> int:
        added = sum(len(payload) for _, payload in self.inserts.values())
        resliced = sum(
            len(payload) - self.stored_bytes[node_id]
            for node_id, (_, payload) in self.updates.items()
            if payload is not None
        )
        return added + resliced - sum(self.deletes.values())

    def changed_rows(self) -> list[NodeRow]:
        return [row for row, _ in self.inserts.values()] + [row for row, _ in self.updates.values()]


class Conflict(Exception):
    """Raised by a backend when a plan no longer applies; the store re-plans and retries."""
