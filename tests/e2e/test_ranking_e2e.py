"""Ranked search through the gateway: the ranking stage reorders searches, reports its
weights, leaves feeds in retrieval order, and degrades to retrieval order without it."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest

from loadtest.local_stack import Stack, start_stack
from services.ranking.fusion import OBJECTIVES

pytestmark = pytest.mark.e2e


def test_search_is_ranked_with_personal_weights(redis_stack: Stack) -> None:
    assert redis_stack.ranking is not None
    status, body = redis_stack.search(query="digital caliper", user_id="1", k=10, debug=True)
    assert status == 200, body
    assert body["degraded"] == []
    weights = body["ranking_weights"]
    assert list(weights) == list(OBJECTIVES) and sum(weights.values()) == pytest.approx(1, abs=1e-3)
    assert len(body["items"]) == 10
    for item in body["items"]:
        assert set(item["objective_scores"]) == set(OBJECTIVES)
    assert "ranking" in body["timings_ms"]
    feed_status, feed = redis_stack.search(query="", user_id="1", k=5)
    assert feed_status == 200 and "ranking_weights" not in feed
    assert all("objective_scores" not in i for i in feed["items"])


def test_ranking_down_keeps_retrieval_order(artifact_root: Path, tmp_path: Path) -> None:
    with ExitStack() as stack:
        s = start_stack(stack, artifact_root, tmp_path, query_understanding=False)
        assert s.ranking is not None
        status, ranked = s.search(query="nitrile gloves", user_id="2", k=5)
        assert status == 200 and ranked["degraded"] == [] and "ranking_weights" in ranked
        s.ranking.proc.kill()
        s.ranking.proc.wait(timeout=10)
        status, body = s.search(query="nitrile gloves box", user_id="2", k=5)
        assert status == 200, body
        assert body["degraded"] == ["ranking"]
        assert len(body["items"]) == 5 and "ranking_weights" not in body
        assert all("objective_scores" not in i for i in body["items"])
