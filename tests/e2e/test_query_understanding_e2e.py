"""Search through the gateway with query understanding: corrected queries, the QU cache,
and an answer (degraded, not failed) when the service is down."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadtest.local_stack import Stack, free_port, start_stack

pytestmark = pytest.mark.e2e


def _metric(stack: Stack, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(stack.metrics_text())
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def test_a_misspelt_query_is_answered_as_the_corrected_one(redis_stack: Stack) -> None:
    assert redis_stack.query_understanding is not None
    status, typo = redis_stack.search(query="digitl calipr", k=5, debug=True)
    assert status == 200, typo
    assert "query_understanding" in typo["timings_ms"] and not typo["degraded"]
    assert typo["corrected_query"] == "digital caliper"
    assert "Measure" in typo["category_intent"]
    status, clean = redis_stack.search(query="digital caliper", k=5)
    assert status == 200
    assert [i["id"] for i in typo["items"]] == [i["id"] for i in clean["items"]]
    assert "corrected_query" not in clean


def test_understanding_is_cached_per_normalised_query(redis_stack: Stack) -> None:
    hits = _metric(
        redis_stack, "gensearch_gateway_cache_total", cache="query_understanding", outcome="hit"
    )
    redis_stack.search(query="Nitrile  Gloves", k=3)
    redis_stack.search(query="nitrile gloves", k=4)  # another answer, the same understanding
    after = _metric(
        redis_stack, "gensearch_gateway_cache_total", cache="query_understanding", outcome="hit"
    )
    assert after >= hits + 1


def test_search_degrades_without_query_understanding(artifact_root: Path, tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    with ExitStack() as stack:
        s = start_stack(
            stack,
            artifact_root,
            tmp_path,
            query_understanding=False,
            gateway_env={"GENSEARCH_GATEWAY_QUERY_UNDERSTANDING_ADDR": dead},
        )
        status, body = s.search(query="soldering iron", k=5)
        assert status == 200, body
        assert body["degraded"] == ["query_understanding"] and len(body["items"]) == 5
