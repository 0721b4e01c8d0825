"""What a storage backend provides to :class:`~seqkv_edge.store.base.SessionStore`.

A backend persists node rows, chunks, session records, leases and a generation counter, and
applies a :class:`~seqkv_edge.store.records.WritePlan` atomically. Everything else (planning,
the in-memory trie, eviction choices, the integrity rules) is shared in ``base``.
"""
from __future__ import annotations

import abc
import contextlib

import numpy as np

from .records import NodeRow, WritePlan


class StoreBackend(abc.ABC):
    """The primitives a backend implements (all private: callers use SessionStore's API)."""

    @abc.abstractmethod
    def _meta(self) -> tuple[str, int, int]:
        """(store uid, generation, stored payload bytes): the cheap per-operation check."""
        ...

    @abc.abstractmethod
    def _changes(self, since: int | None):
        """Rows ``(id, parent, tokens, refs)`` changed and ids deleted after generation ``since``
        (all rows when None or when the log no longer reaches back that far).

        Returns (uid, gen, bytes, rows, deleted ids, full) read as one consistent snapshot.
        """
        ...

    @abc.abstractmethod
    def _node_rows(self, node_ids: list[int]) -> dict[int, NodeRow]:
        ...

    @abc.abstractmethod
    def _payloads(self, node_ids: list[int], touch_at: float | None) -> list[bytes]:
        """Chunks with CRCs verified; with ``touch_at``, count a hit and set last use."""
        ...

    @abc.abstractmethod
    def _commit(self, plan: WritePlan) -> tuple[int, int]:
        """Apply the plan atomically; returns (new generation, stored bytes); raises Conflict."""
        ...

    @abc.abstractmethod
    def _session(self, name: str) -> tuple[int, int] | None:
        ...

    @abc.abstractmethod
    def _sessions(self) -> list[str]:
        ...

    def _session_count(self) -> int:
        return len(self._sessions())

    @abc.abstractmethod
    def _sessions_ending_at(self, node_ids: list[int]) -> dict[int, list[str]]:
        ...

    @abc.abstractmethod
    def _live_leases(self) -> set[int]:
        ...

    @abc.abstractmethod
    def _lease(self, node_ids: list[int], token: str, expires: float) -> None:
        ...

    @abc.abstractmethod
    def _release(self, token: str) -> None:
        ...

    @abc.abstractmethod
    def _all_stats(self) -> dict[str, np.ndarray]:
        """Arrays ids, weight, hits, last_use, nbytes, recompute_s over every node."""
        ...

    @abc.abstractmethod
    def _snapshot(self) -> tuple[int, list[NodeRow], dict[str, tuple[int, int]]]:
        """(stored bytes, every node row, every session) read consistently."""
        ...

    @abc.abstractmethod
    def _verify_payloads(self, rows: list[NodeRow]) -> list[str]:
        ...

    def _backend_problems(self) -> list[str]:
        return []

    def _exclusive(self):
        """Hold writers off for a check, where the backend can."""
        return contextlib.nullcontext()

    def _remove_orphans(self) -> int:
        return 0

    def _housekeeping(self) -> None:
        pass
