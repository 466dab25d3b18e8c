"""The co-visitation table and the decoding prior built from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.common.errors import ArtifactIntegrityError, InvalidInputError
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


def test_node_bonus_is_weight_times_log_mass_of_every_prefix() -> None:
    table = CovisitTable.from_histories(HISTORIES, 6)
    trie = SidTrie.build(CODES, (3, 2))
    prior = CovisitPrior(table, weight=2.0)
    bonus = prior.node_bonus(trie, [0], 6)
    dist = prior.distribution([0], 6)
    assert bonus is not None and dist is not None
    assert bonus.shape == (trie.num_nodes,)
    assert bonus[0] == pytest.approx(0.0, abs=1e-6)  # the root holds all the mass
    first = trie.advance(0, np.zeros(1, np.int64), np.array([0]))[0]
    assert bonus[first] == pytest.approx(2.0 * np.log(dist[0] + dist[1]), rel=1e-5)
    assert CovisitPrior(table, weight=0.0).node_bonus(trie, [0], 6) is None
    trie.add_items(np.array([[2, 1]]))  # a cold-start delta: the prior steps aside
    assert prior.node_bonus(trie, [0], 7) is None


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
