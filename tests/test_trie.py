"""The radix trie (numba kernels) against a brute-force reference, and the eviction planner."""
import itertools

import numpy as np
import pytest

from seqkv_edge.errors import CorruptDataError
from seqkv_edge.store.eviction import eviction_scores, plan_eviction
from seqkv_edge.store.trie import ROOT, RadixTrie


def _brute_force(stored: list, query: np.ndarray) -> int:
    """Longest common prefix of ``query`` with any stored sequence (padded matrix compare)."""
    if not stored:
        return 0
    width = max(max(len(s) for s in stored), len(query))
    table = np.full((len(stored), width), -1, np.int64)
    for row, sequence in zip(table, stored):
        row[: len(sequence)] = sequence
    padded = np.full(width, -2, np.int64)
    padded[: len(query)] = query
    return int(np.cumprod(table == padded, axis=1).sum(axis=1).max())


def _random_sequences(rng, count, alphabet=4):
    """Small alphabet and shared stems, so sequences overlap in many places."""
    stems = [rng.integers(0, alphabet, rng.integers(1, 40)).astype(np.int32) for _ in range(8)]
    return [
        np.concatenate([stems[rng.integers(8)], rng.integers(0, alphabet, rng.integers(1, 30))]).astype(np.int32)
        for _ in range(count)
    ]


def _check_match(trie: RadixTrie, stored: list, query: np.ndarray) -> None:
    length, node_ids, node_ends = trie.match(query)
    assert length == _brute_force(stored, query)
    if length == 0:
        assert node_ids.shape[0] == 0
        return
    # the path spells the query up to the match, node ends are cumulative, only the last is partial
    spelled = trie.path_tokens(node_ids)
    assert np.array_equal(spelled[:length], query[:length])
    assert spelled.shape[0] == node_ends[-1] >= length
    assert np.all(np.diff(node_ends) > 0)
    assert int(node_ends[-2] if node_ends.shape[0] > 1 else 0) < length
    ids, ends = trie.path(int(node_ids[-1]))
    assert np.array_equal(ids, node_ids) and np.array_equal(ends, node_ends)


def test_match_equals_brute_force_over_random_inserts():
    rng = np.random.default_rng(1)
    trie = RadixTrie(node_capacity=16, token_capacity=16)  # start tiny: growth paths run too
    ids = itertools.count(1)
    stored = _random_sequences(rng, 400)
    ends = [trie.insert(s, lambda: next(ids)) for s in stored]
    for sequence, end in zip(stored, ends):
        assert np.array_equal(trie.path_tokens(trie.path(end)[0]), sequence)
    queries = stored[:100] + _random_sequences(rng, 200) + [s[: len(s) // 2] for s in stored[:50]]
    for query in queries:
        _check_match(trie, stored, query)
    # a radix trie: a node where no sequence ends has two or more children (no chains)
    structure = trie.structure()
    inner = ~np.isin(structure["ids"], ends)
    assert np.all(structure["n_children"][inner] >= 2)
    assert structure["n_tokens"].sum() == trie.token_count


def test_split_keeps_the_id_on_the_tail_and_the_children():
    trie = RadixTrie()
    trie.add_leaf(ROOT, np.arange(10, dtype=np.int32), 7)
    trie.add_leaf(7, np.array([50, 51], np.int32), 8)
    trie.split(7, 4, 9)
    assert trie.parent_of(7) == 9 and trie.parent_of(9) == ROOT and trie.parent_of(8) == 7
    assert trie.edge_tokens(9).tolist() == [0, 1, 2, 3]
    assert trie.edge_tokens(7).tolist() == [4, 5, 6, 7, 8, 9]
    length, node_ids, node_ends = trie.match(np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 50, 51, 52], np.int32))
    assert (length, node_ids.tolist(), node_ends.tolist()) == (12, [9, 7, 8], [4, 10, 12])
    with pytest.raises(ValueError):
        trie.split(7, 6, 10)  # offset must fall strictly inside the edge


def _leaf_sequences(trie: RadixTrie) -> list:
    structure = trie.structure()
    leaves = structure["ids"][structure["n_children"] == 0]
    return [trie.path_tokens(trie.path(int(leaf))[0]) for leaf in leaves]


def test_removing_leaves_recycles_slots_and_hash_cells():
    rng = np.random.default_rng(2)
    trie = RadixTrie(node_capacity=16, token_capacity=16)
    ids = itertools.count(1)
    live = {}
    for s in _random_sequences(rng, 300, alphabet=6):
        live[trie.insert(s, lambda: next(ids))] = s
    for _ in range(6):
        structure = trie.structure()
        leaves = structure["ids"][structure["n_children"] == 0]
        for leaf in leaves[: max(1, len(leaves) // 2)]:
            trie.remove_leaf(int(leaf))
        live = {end: s for end, s in live.items() if end in trie}
        for end, sequence in live.items():
            assert np.array_equal(trie.path_tokens(trie.path(end)[0]), sequence)
        spelled = _leaf_sequences(trie)
        for query in list(live.values())[::5] + _random_sequences(rng, 60, alphabet=6):
            assert trie.match(query)[0] == _brute_force(spelled, query)
        for s in _random_sequences(rng, 40, alphabet=6):
            live[trie.insert(s, lambda: next(ids))] = s
    assert trie._keys.shape[0] <= 4096  # tombstones were purged, not accumulated
    structure = trie.structure()
    with pytest.raises(ValueError):
        trie.remove_leaf(int(structure["ids"][structure["n_children"] > 0][0]))


def test_removed_sequences_no_longer_match():
    trie = RadixTrie()
    ids = itertools.count(1)
    a = trie.insert(np.array([1, 2, 3, 4], np.int32), lambda: next(ids))
    b = trie.insert(np.array([1, 2, 5, 6], np.int32), lambda: next(ids))
    head = trie.parent_of(b)
    trie.remove_leaf(b)
    assert trie.match(np.array([1, 2, 5, 6], np.int32))[0] == 2
    trie.remove_leaf(a)
    assert trie.match(np.array([1, 2, 3, 4], np.int32))[0] == 2
    assert trie.structure()["ids"].tolist() == [head] and trie.children_count(head) == 0


def _rows(trie: RadixTrie):
    structure = trie.structure()
    return [
        (int(i), int(p), trie.edge_tokens(int(i)), int(r))
        for i, p, r in zip(structure["ids"], structure["parent_ids"], structure["refs"])
    ]


def test_apply_rebuilds_the_same_trie_from_rows_in_any_order():
    rng = np.random.default_rng(3)
    trie = RadixTrie()
    ids = itertools.count(1)
    stored = _random_sequences(rng, 200)
    for s in stored:
        trie.insert(s, lambda: next(ids))
    rows = _rows(trie)
    rng.shuffle(rows)
    rebuilt = RadixTrie()
    rebuilt.apply(rows)
    for query in stored + _random_sequences(rng, 100):
        got, want = rebuilt.match(query), trie.match(query)
        assert got[0] == want[0] and np.array_equal(got[1], want[1]) and np.array_equal(got[2], want[2])


def test_apply_a_change_batch_like_a_split_from_another_process():
    trie = RadixTrie()
    trie.apply([(5, ROOT, np.arange(8, dtype=np.int32), 1), (6, 5, np.array([20], np.int32), 1)])
    # another process split node 5 after 3 tokens (new head 9) and hung leaf 10 under the head
    trie.apply([
        (10, 9, np.array([99, 98], np.int32), 1),
        (5, 9, np.arange(3, 8, dtype=np.int32), 1),
        (9, ROOT, np.arange(3, dtype=np.int32), 0),
    ])
    assert trie.match(np.array([0, 1, 2, 99, 98], np.int32))[1].tolist() == [9, 10]
    assert trie.match(np.array([0, 1, 2, 3, 4, 5, 6, 7, 20], np.int32))[1].tolist() == [9, 5, 6]
    assert trie.children_count(9) == 2 and trie.refs(9) == 0 and trie.refs(10) == 1
    trie.apply([], deleted=[10])
    assert 10 not in trie and trie.children_count(9) == 1


@pytest.mark.parametrize(
    "rows, message",
    [
        ([(1, 77, np.array([1], np.int32), 0)], "missing parent"),
        ([(1, ROOT, np.array([1, 2], np.int32), 0), (2, ROOT, np.array([1, 3], np.int32), 0)], "start with token"),
        ([(1, ROOT, np.array([], np.int32), 0)], "empty edge"),
    ],
)
def test_apply_refuses_rows_that_are_not_a_trie(rows, message):
    with pytest.raises(CorruptDataError, match=message):
        RadixTrie().apply(rows)


def test_apply_refuses_deleting_a_node_with_children():
    trie = RadixTrie()
    trie.apply([(1, ROOT, np.array([1], np.int32), 0), (2, 1, np.array([2], np.int32), 1)])
    with pytest.raises(CorruptDataError, match="children"):
        trie.apply([], deleted=[1])


# ---- eviction -------------------------------------------------------------------------------


def _plan(need, protected=(), **overrides):
    # root ─ 1 (shared prefix, 1000 B) ─┬─ 2 (leaf, 100 B)
    #                                   └─ 3 (leaf, 100 B) ─ 4 (leaf, 100 B)
    table = dict(
        ids=np.array([1, 2, 3, 4]), parent_ids=np.array([0, 1, 1, 3]),
        n_children=np.array([2, 0, 1, 0]), refs=np.array([1, 1, 1, 1]),
        nbytes=np.array([1000, 100, 100, 100]), score=np.array([5.0, 1.0, 3.0, 2.0]),
        last_use=np.array([0.0, 0.0, 0.0, 0.0]),
    )
    table.update(overrides)
    return plan_eviction(**table, need_bytes=need, protected=protected)


def test_eviction_takes_lowest_score_leaves_first_and_never_inner_nodes():
    assert _plan(100) == ([2], 100)
    assert _plan(150) == ([2, 4], 200)
    # node 3 becomes a leaf once 4 is gone and then competes on its score; 1 comes last
    assert _plan(10_000) == ([2, 4, 3, 1], 1300)


def test_eviction_breaks_ties_by_least_recent_use():
    order, _ = _plan(100, score=np.ones(4), last_use=np.array([0.0, 9.0, 0.0, 5.0]))
    assert order == [4]


def test_eviction_skips_protected_nodes_and_their_ancestors():
    order, freed = _plan(10_000, protected=[4])
    assert order == [2] and freed == 100  # 3 and 1 keep a protected descendant


def test_eviction_drops_unreferenced_nodes_first_and_cascades():
    # nodes 1 and 3 are inner nodes no session ends at: once their children are evicted they
    # serve nobody and go too, even past the bytes asked for
    assert _plan(1, refs=np.array([0, 1, 0, 1]))[0] == [2]
    assert _plan(150, refs=np.array([0, 1, 0, 1])) == ([2, 4, 3, 1], 1300)
    # a childless node nobody uses goes before any scored leaf
    assert _plan(1, refs=np.array([1, 1, 1, 0]))[0] == [4]


def test_eviction_score_is_recompute_time_saved_per_byte():
    score = eviction_scores(np.array([100.0, 100.0]), np.array([3, 3]), np.array([2.0, 2.0]), np.array([600, 0]))
    assert score[0] == pytest.approx(100 * 3 * 2 / 600)
    assert np.isfinite(score[1])  # a zero-byte node does not divide by zero
