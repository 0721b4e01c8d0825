"""Which trie nodes to drop when a store is over its byte budget.

A node is worth keeping in proportion to the recompute time it saves per stored byte:
``score = weight_bits * hits * recompute_s / bytes``. Only leaves are evicted (a node with live
children never is), lowest score first, least recently used first among equal scores. Nodes that
no session ends at and that have no children serve nobody and go first. Dropping a leaf can make
its parent a leaf, which then competes like the others.

>>> import numpy as np
>>> order, freed = plan_eviction(
...     ids=np.array([1, 2, 3]), parent_ids=np.array([0, 1, 1]), n_children=np.array([2, 0, 0]),
...     refs=np.array([0, 1, 1]), nbytes=np.array([100, 50, 50]),
...     score=np.array([9.0, 2.0, 1.0]), last_use=np.array([0.0, 0.0, 0.0]), need_bytes=60)
>>> order, freed
([3, 2, 1], 200)
"""
from __future__ import annotations

import heapq
from typing import Iterable

import numpy as np


def eviction_scores(
    weight_bits: np.ndarray, hits: np.ndarray, recompute_s: np.ndarray, nbytes: np.ndarray
) -> np.ndarray:
    """Recompute seconds saved per stored byte, weighted by information content and use."""
    weight = np.asarray(weight_bits, np.float64)
    return weight * np.asarray(hits, np.float64) * np.asarray(recompute_s, np.float64) / np.maximum(
        np.asarray(nbytes, np.float64), 1.0
    )


def plan_eviction(
    ids: np.ndarray,
    parent_ids: np.ndarray,
    n_children: np.ndarray,
    refs: np.ndarray,
    nbytes: np.ndarray,
    score: np.ndarray,
    last_use: np.ndarray,
    need_bytes: int,
    protected: Iterable[int] = (),
) -> tuple[list[int], int]:
    """Node ids to drop, in order, until ``need_bytes`` are freed or nothing evictable is left.

    ``protected`` ids (open readers, the path being written) are never chosen; neither are their
    ancestors, since those keep a child. Returns the ids and the bytes they free.
    """
    index = {int(node_id): i for i, node_id in enumerate(ids)}
    children = np.array(n_children, np.int64, copy=True)
    keep = {int(i) for i in protected}
    heap: list[tuple[float, float, int]] = []

    def push(i: int) -> None:
        if int(ids[i]) not in keep:
            priority = -np.inf if refs[i] == 0 else float(score[i])
            heapq.heappush(heap, (priority, float(last_use[i]), i))

    for i in np.flatnonzero(children == 0):
        push(int(i))
    order: list[int] = []
    freed = 0
    # past the target, still drop nodes that no session needs any more
    while heap and (freed < need_bytes or heap[0][0] == -np.inf):
        _, _, i = heapq.heappop(heap)
        order.append(int(ids[i]))
        freed += int(nbytes[i])
        parent = index.get(int(parent_ids[i]))
        if parent is not None:
            children[parent] -= 1
            if children[parent] == 0:
                push(parent)
    return order, freed
