"""Gateway pieces without sockets: request validation, circuit breaker, in-process store."""

from __future__ import annotations

import asyncio
import time
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.common.limits import MAX_EXCLUDE
from services.common.text import normalize_query, strip_control
from services.gateway.breaker import CircuitBreaker
from services.gateway.schemas import SearchRequest
from services.gateway.search import excluded_ids
from services.gateway.store import InMemoryStore


def test_query_is_nfkc_normalised_and_control_chars_stripped() -> None:
    req = SearchRequest(query="  Ｄｉｇｉｔａｌ\x00 Caliper\u200b\t\n ")
    assert req.query == "digital caliper"
    assert normalize_query("ﬁne  ＳＴＥＥＬ") == "fine steel"


def test_query_cap_applies_after_normalisation() -> None:
    SearchRequest(query="a" * 256)
    with pytest.raises(ValidationError, match="at most 256"):
        SearchRequest(query="a" * 257)
    # 300 raw characters, 250 after collapsing whitespace: accepted.
    assert len(SearchRequest(query="a " * 125 + " " * 50).query) == 249


def test_unknown_fields_bad_ids_and_k_bounds_are_rejected() -> None:
    with pytest.raises(ValidationError, match="extra"):
        SearchRequest.model_validate({"query": "x", "colour": "red"})
    with pytest.raises(ValidationError, match="pattern"):
        SearchRequest(user_id="bad id with spaces")
    with pytest.raises(ValidationError):
        SearchRequest(k=0)
    with pytest.raises(ValidationError):
        SearchRequest(k=101)
    with pytest.raises(ValidationError):
        SearchRequest.model_validate({"filters": {"exclude_ids": ["ok", "not ok!"]}})
    assert SearchRequest(user_id="user_42").user_id == "user_42"


def test_breaker_opens_half_opens_and_closes() -> None:
    breaker = CircuitBreaker("x", failures=2, reset_seconds=0.05)
    assert breaker.allow()
    breaker.failure()
    assert breaker.state == "closed"
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    time.sleep(0.06)
    assert breaker.state == "half_open"
    assert breaker.allow()
    assert not breaker.allow(), "only one trial call while half-open"
    breaker.failure()
    assert breaker.state == "open"
    time.sleep(0.06)
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()


async def test_memory_store_round_trip_and_ttl() -> None:
    store = InMemoryStore()
    await store.put_users("v1", {"u1": ["1", "2"]})
    await store.put_items("v1", {"1": {"title": "one"}})
    assert await store.user_history("v1", "u1") == ["1", "2"]
    assert await store.user_history("v2", "u1") is None, "keys are versioned"
    assert await store.items("v1", ["1", "9"]) == {"1": {"title": "one"}}
    await store.cache_set("k", b"v", ttl_seconds=1)
    assert await store.cache_get("k") == b"v"
    await store.cache_set("gone", b"v", ttl_seconds=0)
    assert await store.cache_get("gone") is None


async def test_memory_cache_is_bounded_by_bytes_oldest_first() -> None:
    store = InMemoryStore(cache_max_bytes=1000)
    for i in range(50):
        await store.cache_set(f"k{i:02d}", b"x" * 97, ttl_seconds=60)  # 100 bytes each
    assert store.cache_bytes <= 1000
    assert await store.cache_get("k00") is None, "the oldest went first"
    assert await store.cache_get("k49") == b"x" * 97
    await store.cache_set("k49", b"y", ttl_seconds=60)  # replacing counts once
    assert store.cache_bytes == 9 * 100 + 3 + 1
    await store.cache_set("huge", b"z" * 5000, ttl_seconds=60)
    assert await store.cache_get("huge") is None, "an entry over the bound is not kept"


async def test_memory_token_bucket_limits_then_refills() -> None:
    store = InMemoryStore()
    results = [await store.take_token("key", rate=20.0, burst=3) for _ in range(4)]
    assert [ok for ok, _ in results] == [True, True, True, False]
    assert 0 < results[-1][1] <= 0.05 + 1e-9
    await asyncio.sleep(0.06)
    assert (await store.take_token("key", rate=20.0, burst=3))[0]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_strip_control_drops_exactly_the_category_c_characters(text: str) -> None:
    kept = strip_control(text)
    assert kept == "".join(
        ch for ch in text if ch.isspace() or not unicodedata.category(ch).startswith("C")
    )


def test_exclude_history_adds_the_most_recent_history_items_up_to_the_cap() -> None:
    history = ["a", "b", "c", "b"]
    plain = SearchRequest.model_validate({"filters": {"exclude_ids": ["x", "c"]}})
    assert excluded_ids(plain, history) == ["x", "c"]
    assert excluded_ids(SearchRequest(), history) == []
    both = SearchRequest.model_validate(
        {"filters": {"exclude_ids": ["x", "c"], "exclude_history": True}}
    )
    assert excluded_ids(both, history) == ["x", "c", "b", "a"]
    full = SearchRequest.model_validate(
        {
            "filters": {
                "exclude_ids": [f"i{n}" for n in range(MAX_EXCLUDE - 1)],
                "exclude_history": True,
            }
        }
    )
    out = excluded_ids(full, history)
    assert len(out) == MAX_EXCLUDE and out[-1] == "b"  # room for the most recent one only
