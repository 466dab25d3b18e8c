"""The Locust request mix: shares, Zipf skew, bad requests, real WANDS queries."""

from __future__ import annotations

import statistics
from collections import Counter

import pytest
from pydantic import BaseModel, ValidationError

from loadtest.workload_mix import KINDS, MixShares, PlannedRequest, RequestMix
from models_export.dataset_files import wands_queries
from services.common.config import data_dir
from services.gateway.schemas import RagContextRequest, RagRerankRequest, SearchRequest

WANDS = wands_queries(data_dir())
# 200 users, each issuing one of 120 derived queries, with a short history
DERIVED = [
    (f"derived query {i % 120}", f"u{i}", [str(i), str(i + 1), str(i + 2)]) for i in range(200)
]
CATEGORIES = ["Industrial & Scientific > Lab", "Industrial & Scientific > Tools"]
DRAWS = 20_000


def _mix(shares: MixShares | None = None, seed: int = 7) -> RequestMix:
    return RequestMix(DERIVED, WANDS, CATEGORIES, shares, seed)


def _draw(mix: RequestMix, n: int = DRAWS) -> list[PlannedRequest]:
    return [mix.next() for _ in range(n)]


def test_wands_file_holds_real_queries() -> None:
    assert len(WANDS) > 400
    assert "salon chair" in WANDS


def test_kind_shares_come_out_near_their_configured_values() -> None:
    shares = MixShares()
    total = sum(getattr(shares, k) for k in KINDS)
    counts = Counter(r.kind for r in _draw(_mix(shares)))
    for kind in KINDS:
        assert counts[kind] / DRAWS == pytest.approx(getattr(shares, kind) / total, abs=0.01)
    assert counts["bad"] / DRAWS == pytest.approx(0.02, abs=0.005)
    assert counts["rag"] > 0


def test_rag_requests_are_valid_context_and_rerank_calls() -> None:
    rag = [r for r in _draw(_mix(MixShares(rag=1.0))) if r.kind == "rag"]
    paths = Counter(r.path for r in rag)
    assert set(paths) == {"/v1/rag/context", "/v1/rag/rerank"}
    assert paths["/v1/rag/context"] / len(rag) == pytest.approx(0.5, abs=0.05)
    for r in rag:
        assert r.body is not None and r.body["query"] and r.ok_status == frozenset({200})
        if r.path == "/v1/rag/rerank":
            docs = r.body["documents"]
            assert 1 <= len(docs) <= 3 and all(set(d) in ({"item_id"}, {"text"}) for d in docs)


def test_known_users_anonymous_and_wands_shares() -> None:
    shares = MixShares(known_user=0.6, wands=0.4)
    searches = [r for r in _draw(_mix(shares)) if r.kind == "search"]
    assert searches and all(r.body is not None for r in searches)
    known = sum("user_id" in r.body for r in searches if r.body)
    assert known / len(searches) == pytest.approx(0.6, abs=0.02)
    assert all(
        r.name == "/v1/search [anon]" for r in searches if r.body and "user_id" not in r.body
    )
    wands = set(WANDS)
    from_wands = sum(r.body["query"] in wands for r in searches if r.body)
    assert from_wands / len(searches) == pytest.approx(0.4, abs=0.02)


def test_query_repeats_are_zipf_skewed() -> None:
    mix = _mix(MixShares(wands=0.0))
    counts = Counter(
        r.body["query"] for r in _draw(mix) if r.kind == "search" and r.body is not None
    )
    top = counts.most_common(1)[0][1]
    median = statistics.median(counts.values())
    assert top > 10 * median
    # the head is a seeded shuffle of the pool, not its first entry
    heads = {_mix(MixShares(wands=0.0), seed=s).derived.values[0] for s in range(5)}
    assert len(heads) > 1


def test_same_seed_same_plan() -> None:
    assert _draw(_mix(seed=3), 200) == _draw(_mix(seed=3), 200)
    assert _draw(_mix(seed=3), 200) != _draw(_mix(seed=4), 200)


def test_feeds_filters_and_item_lookups() -> None:
    plan = _draw(_mix(MixShares(exclude_history=0.5)))
    users = {u for _, u, _ in DERIVED}
    feeds = [r for r in plan if r.kind == "feed"]
    assert all(r.body and r.body["query"] == "" and r.body["user_id"] in users for r in feeds)
    with_history = sum(bool(r.body and r.body.get("filters")) for r in feeds)
    assert with_history / len(feeds) == pytest.approx(0.5, abs=0.05)
    filtered = [r.body["filters"] for r in plan if r.kind == "filtered" and r.body]
    assert {"category" in f for f in filtered} == {True, False}
    items = [r for r in plan if r.kind == "item"]
    assert all(r.method == "GET" and r.path.startswith("/v1/items/") for r in items)
    assert {r.name for r in items} == {"/v1/items/{id}"}


def test_every_good_search_is_valid_and_every_bad_one_is_not() -> None:
    plan = _draw(_mix())
    models: dict[str, type[BaseModel]] = {
        "/v1/search": SearchRequest,
        "/v1/rag/context": RagContextRequest,
        "/v1/rag/rerank": RagRerankRequest,
    }
    for r in plan:
        if r.method == "POST" and r.kind != "bad":
            models[r.path].model_validate(r.body)
            assert r.ok_status == {200} and r.expect_items == (r.kind != "rag")
    bad = [r for r in plan if r.kind == "bad"]
    assert {r.path for r in bad} >= {"/v1/search", "/v1/items/zz-no-such-item-0", "/v1/rag/rerank"}
    for r in bad:
        assert r.ok_status and all(400 <= s < 500 for s in r.ok_status)
        if r.method == "POST":
            with pytest.raises(ValidationError):
                models[r.path].model_validate(r.body)
    bodies = [r.body for r in bad if r.body and r.path == "/v1/search"]
    assert {b.get("k") for b in bodies} >= {0, 10_000}
    assert any(len(b["query"]) == 5000 for b in bodies)
    assert any("filters" in b for b in bodies)


def test_failure_verdicts() -> None:
    search = PlannedRequest(
        "search", "POST", "/v1/search", {}, "/v1/search", frozenset({200}), True
    )
    assert search.failure(200, lambda: {"items": [{"id": "1"}]}) is None
    assert search.failure(200, lambda: {"items": []}) == "200 without items"
    assert search.failure(503, lambda: {}) is not None
    bad = PlannedRequest("bad", "POST", "/v1/search", {"k": 0}, "b", frozenset({422}))
    assert bad.failure(422, lambda: {"detail": []}) is None
    assert bad.failure(200, lambda: {"items": [{"id": "1"}]}) is not None
    assert bad.failure(500, lambda: {}) is not None


def test_share_overrides_and_guards() -> None:
    shares = MixShares.from_env(
        {"GENSEARCH_LOCUST_SHARE_BAD": "0.2", "GENSEARCH_LOCUST_SHARE_K": "5"}
    )
    assert shares.bad == 0.2 and shares.k == 5 and shares.search == MixShares().search
    with pytest.raises(ValueError):
        MixShares(rag=-0.1)
    with pytest.raises(ValueError):
        MixShares(known_user=1.5)
