"""The co-visitation table and the decoding prior built from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import ArtifactIntegrityError, InvalidInputError
from services.retrieval.beam_search import SparseNodeBonus
from services.retrieval.covisit import CovisitPrior, CovisitTable
from services.retrieval.trie import SidTrie

HISTORIES = [np.array([0, 1, 2]), np.array([0, 1]), np.array([3, 1]), np.array([4])]
CODES = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1]])


def test_scores_weight_recent_items_by_decay() -> None:
    table = CovisitTable.from_histories(HISTORIES, 6)
    np.testing.assert_array_equal(table.popularity, [2, 3, 1, 1, 1, 0])
    # rows: 0 -> 1 (2x at gap 1), 2 (gap 2); 1 -> 2; 3 -> 1
    recent_only = table.scores([[3, 0]], decay=0.0, last_n=5)[0]
    np.testing.assert_allclose(recent_only, [0, 2, 0.5, 0, 0, 0])
    both = table.scores([[3, 0]], decay=0.5, last_n=5)[0]
    np.testing.assert_allclose(both, [0, 2.5, 0.5, 0, 0, 0])
    assert table.scores([[3, 0]], decay=0.5, last_n=1)[0].tolist() == recent_only.tolist()
    assert not table.scores([[99]], decay=0.5, last_n=5).any()  # unknown rows are ignored
    with pytest.raises(InvalidInputError):
        table.scores([[0]], decay=2.0, last_n=5)
    items, values = table.sparse_scores([3, 0], decay=0.5, last_n=5)
    assert items.tolist() == [1, 2] and values.tolist() == both[[1, 2]].tolist()
    assert table.sparse_scores([99, 5], decay=0.5, last_n=5)[0].size == 0


def test_prior_is_a_distribution_that_backs_off_to_popularity() -> None:
    prior = CovisitPrior(CovisitTable.from_histories(HISTORIES, 6), weight=1.0, smoothing=0.2)
    dist = prior.distribution([0], num_rows=7)  # one row more than the table knows
    assert dist is not None
    assert dist.sum() == pytest.approx(1.0)
    assert dist.argmax() == 1 and (dist > 0).all()
    assert dist[6] == pytest.approx(dist[5])  # an unknown row counts as never bought
    assert prior.distribution([], 6) is None
    assert prior.distribution([2], 6) is None  # item 2 leads nowhere: no opinion
    with pytest.raises(InvalidInputError):
        CovisitPrior(prior.table, weight=-1.0)


def path_nodes(trie: SidTrie, codes: np.ndarray) -> list[int]:
    """Sorted ids of the nodes on the paths of SIDs ``codes``, the root included."""
    nodes, path = trie.root(len(codes)), [trie.root(len(codes))]
    for level in range(trie.depth):
        nodes = trie.advance(level, nodes, codes[:, level])
        path.append(nodes)
    return sorted(set(np.concatenate(path).tolist()))


def test_node_bonus_is_weight_times_log_mass_of_every_prefix() -> None:
    table = CovisitTable.from_histories(HISTORIES, 6)
    trie = SidTrie.build(CODES, (3, 2))
    prior = CovisitPrior(table, weight=2.0)
    bonus = prior.dense_node_bonus(trie, [0], 6)
    dist = prior.distribution([0], 6)
    assert bonus is not None and dist is not None
    assert bonus.shape == (trie.num_nodes,)
    assert bonus[0] == pytest.approx(0.0, abs=1e-6)  # the root holds all the mass
    first = trie.advance(0, np.zeros(1, np.int64), np.array([0]))[0]
    assert bonus[first] == pytest.approx(2.0 * np.log(dist[0] + dist[1]), rel=1e-5)
    sparse = prior.node_bonus(trie, [0], 6)
    assert isinstance(sparse, SparseNodeBonus) and len(sparse) == trie.num_nodes
    # item 0 leads to items 1 and 2 only: their paths are the only nodes off the back-off
    assert sparse.nodes.tolist() == path_nodes(trie, CODES[[1, 2]])
    np.testing.assert_allclose(sparse.dense(), bonus, rtol=1e-6, atol=1e-6)
    for off in (CovisitPrior(table, weight=0.0), prior):
        history = [0] if off is not prior else [2]  # weight 0 / a history that leads nowhere
        assert off.node_bonus(trie, history, 6) is None
        assert off.dense_node_bonus(trie, history, 6) is None
    trie.add_items(np.array([[2, 1]]))  # a cold-start delta: the prior steps aside
    assert prior.node_bonus(trie, [0], 7) is None
    assert prior.dense_node_bonus(trie, [0], 7) is None


def assert_same_bonus(prior: CovisitPrior, trie: SidTrie, history: list[int], rows: int) -> None:
    """The sparse bonus equals the dense one: bit for bit off the co-visited items' paths
    (back-off mass only), to float32 rounding on them (inner sums in another order)."""
    dense = prior.dense_node_bonus(trie, history, rows)
    sparse = prior.node_bonus(trie, history, rows)
    assert (dense is None) == (sparse is None)
    if dense is None or sparse is None:
        return
    off_path = np.ones(trie.num_nodes, dtype=bool)
    off_path[sparse.nodes] = False
    np.testing.assert_array_equal(sparse.base[off_path], dense[off_path])
    np.testing.assert_allclose(sparse.values, dense[sparse.nodes], rtol=2e-6, atol=1e-6)
    every = np.arange(trie.num_nodes, dtype=np.int64)
    np.testing.assert_array_equal(sparse.at(every), sparse.dense())
    np.testing.assert_array_equal(sparse.at(every[::-1]), sparse.dense()[::-1])


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(2, 120),
    collisions=st.booleans(),
    subset=st.booleans(),
    extra_rows=st.integers(0, 3),
    decay=st.sampled_from([0.0, 0.3, 1.0]),
    weight=st.floats(0.1, 4.0),
    smoothing=st.sampled_from([0.05, 0.5, 1.0]),
    seed=st.integers(0, 10_000),
)
def test_sparse_node_bonus_matches_the_dense_one(
    n: int,
    collisions: bool,
    subset: bool,
    extra_rows: int,
    decay: float,
    weight: float,
    smoothing: float,
    seed: int,
) -> None:
    """Random catalogs (duplicate SIDs, category sub-tries, catalog rows the table does not
    know) and training histories: sparse == dense on every node of the trie."""
    rng = np.random.default_rng(seed)
    sizes = (4, 3, 5)
    codes = np.stack([rng.integers(0, k, n) for k in sizes], axis=1)
    if not collisions:
        codes = np.unique(codes, axis=0)
    rows = len(codes) + extra_rows
    histories = [rng.integers(0, len(codes), rng.integers(1, 8)) for _ in range(3 * len(codes))]
    table = CovisitTable.from_histories(histories, len(codes))
    prior = CovisitPrior(table, weight=weight, decay=decay, last_n=5, smoothing=smoothing)
    extra = codes[np.arange(extra_rows) % len(codes)]  # as many rows as asked, even if few
    trie = SidTrie.build(np.concatenate([codes, extra]), sizes)
    if subset:
        trie = trie.subset(np.flatnonzero(rng.random(rows) < 0.5))
    for _ in range(4):
        history = rng.integers(0, rows, rng.integers(0, 7)).tolist()
        assert_same_bonus(prior, trie, history, rows)


def test_a_grown_trie_gets_a_fresh_backoff() -> None:
    """The per-trie back-off is cached: a trie grown by cold-start items (then compacted)
    must not be served the old one."""
    table = CovisitTable.from_histories(HISTORIES, 6)
    prior = CovisitPrior(table, weight=1.0)
    trie = SidTrie.build(CODES[:5], (3, 2))
    assert_same_bonus(prior, trie, [0], 6)
    trie.add_items(CODES[5:])
    trie.compact()
    assert_same_bonus(prior, trie, [0], 6)
    fresh = prior.node_bonus(SidTrie.build(CODES, (3, 2)), [0], 6)
    again = prior.node_bonus(trie, [0], 6)
    assert fresh is not None and again is not None
    np.testing.assert_array_equal(again.dense(), fresh.dense())


def test_table_round_trips_and_refuses_other_files(tmp_path: Path) -> None:
    table = CovisitTable.from_histories(HISTORIES, 6)
    path = tmp_path / "covisit.npz"
    table.save(path)
    back = CovisitTable.load(path)
    np.testing.assert_array_equal(back.matrix.toarray(), table.matrix.toarray())
    np.testing.assert_array_equal(back.popularity, table.popularity)
    other = tmp_path / "other.npz"
    np.savez(other, data=np.zeros(1))
    with pytest.raises(ArtifactIntegrityError):
        CovisitTable.load(other)
