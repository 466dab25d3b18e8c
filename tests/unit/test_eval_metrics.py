"""Ranking metrics and top-k selection on hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models_export.evaluation.metrics import (
    METRIC_NAMES,
    all_metrics,
    ndcg_at_k,
    recall_at_k,
    target_ranks,
)
from models_export.evaluation.protocol import tie_break_key, top_k_rows


def test_target_ranks_are_one_based_and_zero_when_missing() -> None:
    ranked = [[7, 3, 9], [1, 2, 3], [4, 5, 6]]
    assert target_ranks(ranked, [7, 3, 8]).tolist() == [1, 3, 0]


def test_target_ranks_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError):
        target_ranks([[1]], [1, 2])


def test_target_at_rank_one_scores_one() -> None:
    ranks = np.array([1])
    assert recall_at_k(ranks, 5) == 1.0
    assert ndcg_at_k(ranks, 5) == 1.0


def test_target_exactly_at_rank_k_counts_and_k_plus_one_does_not() -> None:
    assert recall_at_k(np.array([10]), 10) == 1.0
    assert ndcg_at_k(np.array([10]), 10) == pytest.approx(1 / math.log2(11))
    assert recall_at_k(np.array([11]), 10) == 0.0
    assert ndcg_at_k(np.array([11]), 10) == 0.0


def test_missing_target_scores_zero() -> None:
    ranks = np.array([0])
    assert recall_at_k(ranks, 100) == 0.0
    assert ndcg_at_k(ranks, 10) == 0.0


def test_means_over_queries_match_hand_computation() -> None:
    ranks = np.array([1, 3, 0, 10])
    assert recall_at_k(ranks, 5) == pytest.approx(2 / 4)
    assert recall_at_k(ranks, 10) == pytest.approx(3 / 4)
    # 1/log2(2) = 1, 1/log2(4) = 0.5, missing = 0, rank 10 outside @5
    assert ndcg_at_k(ranks, 5) == pytest.approx((1 + 0.5) / 4)
    assert ndcg_at_k(ranks, 10) == pytest.approx((1 + 0.5 + 1 / math.log2(11)) / 4)


def test_all_metrics_has_every_reported_name_and_empty_is_nan() -> None:
    m = all_metrics(np.array([2]))
    assert tuple(m) == METRIC_NAMES
    assert m["recall@5"] == 1.0
    assert m["ndcg@5"] == pytest.approx(1 / math.log2(3))
    assert math.isnan(recall_at_k(np.array([], dtype=np.int64), 5))


def test_top_k_rows_orders_by_score_then_tie_key() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.9, np.nan]])
    assert top_k_rows(scores, 3) == [[1, 3, 2]]  # tie 1/3 -> lower row first by default
    key = np.array([4, 3, 2, 1, 0])  # item 3 has priority over item 1
    assert top_k_rows(scores, 3, key) == [[3, 1, 2]]
    # NaN ranks last; k larger than the catalog returns everything
    assert top_k_rows(scores, 10) == [[1, 3, 2, 0, 4]]


def test_top_k_rows_cuts_ties_at_the_boundary_by_key() -> None:
    scores = np.array([[1.0, 1.0, 1.0, 2.0]])
    assert top_k_rows(scores, 2, np.array([2, 0, 1, 3])) == [[3, 1]]


def test_tie_break_key_is_a_seeded_permutation() -> None:
    a, b = tie_break_key(50, 0), tie_break_key(50, 0)
    assert np.array_equal(a, b)
    assert sorted(a.tolist()) == list(range(50))
    assert not np.array_equal(a, tie_break_key(50, 1))
