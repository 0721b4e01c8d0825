"""Consistency checks of a store's index (``SessionStore.check``)."""
from __future__ import annotations

import collections

from ..errors import CorruptDataError
from .records import NodeRow
from .trie import RadixTrie


def trie_problems(rows: list[NodeRow], sessions: dict, stored_bytes: int) -> list[str]:
    """What is wrong with a store's index: nodes that do not form a trie, reference counts that do not match
    the sessions ending at each node, sessions whose token count differs from their path, a wrong byte total.
    ``sessions`` maps a name to (end node, n_tokens). Empty when all is well."""
    problems = []
    trie = RadixTrie(node_capacity=2 * len(rows) + 16)
    try:
        trie.apply([r.structure() for r in rows])
    except (CorruptDataError, KeyError) as error:
        return [f"nodes do not form a trie: {error}"]
    depth = {}
    for row in rows:
        try:
            depth[row.id] = int(trie.path(row.id)[1][-1])
        except CorruptDataError as error:
            problems.append(str(error))
    ending = collections.Counter(end for end, _ in sessions.values())
    for row in rows:
        if row.refs != ending.get(row.id, 0):
            problems.append(f"node {row.id} counts {row.refs} sessions, {ending.get(row.id, 0)} end there")
    for name, (end, n_tokens) in sessions.items():
        if end not in depth:
            problems.append(f"session {name!r} ends at missing node {end}")
        elif depth[end] != n_tokens:
            problems.append(f"session {name!r} has {n_tokens} tokens, its path {depth[end]}")
    total = sum(row.nbytes for row in rows)
    if total != stored_bytes:
        problems.append(f"byte total says {stored_bytes}, nodes hold {total}")
    return problems
