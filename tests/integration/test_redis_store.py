"""The Redis feature store against a real redis-server of the tests' own."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.gateway.breaker import CircuitBreaker
from services.gateway.store import RedisStore
from tests.conftest import RedisServer
from tests.support import free_port

pytestmark = pytest.mark.integration


def _store(url: str, prefix: str) -> RedisStore:
    return RedisStore(
        url,
        prefix=prefix,
        socket_timeout=0.2,
        connect_timeout=0.2,
        max_connections=8,
        breaker=CircuitBreaker("redis", failures=3, reset_seconds=0.2),
    )


async def test_features_cache_and_versioned_keys(redis_server: RedisServer) -> None:
    store = _store(redis_server.url, "t1")
    try:
        assert await store.ping()
        await store.put_users("v1", {"u1": ["3", "4"], "u2": ["5"]})
        await store.put_items("v1", {"3": {"title": "three"}, "4": {"title": "four"}})
        await store.put_popular("v1", ["4", "3"])
        assert await store.user_history("v1", "u1") == ["3", "4"]
        assert await store.user_history("v2", "u1") is None
        assert await store.items("v1", ["3", "4", "nope"]) == {
            "3": {"title": "three"},
            "4": {"title": "four"},
        }
        assert await store.popular("v1") == ["4", "3"]
        await store.cache_set("q", b"\x00bin", ttl_seconds=1)
        assert await store.cache_get("q") == b"\x00bin"
        raw = await store.client.get("t1:v1:user:u1")
        assert raw == b'["3","4"]', "compact JSON values under prefixed, versioned keys"
        assert 0 < await store.client.ttl("t1:cache:q") <= 1
    finally:
        await store.close()


async def test_token_bucket_on_redis(redis_server: RedisServer) -> None:
    store = _store(redis_server.url, "t2")
    try:
        verdicts = [await store.take_token("k", rate=5.0, burst=2) for _ in range(3)]
        assert [ok for ok, _ in verdicts] == [True, True, False]
        assert 0 < verdicts[-1][1] <= 0.2 + 1e-6
        await asyncio.sleep(0.25)
        assert (await store.take_token("k", rate=5.0, burst=2))[0]
    finally:
        await store.close()


async def test_redis_down_is_a_fast_miss() -> None:
    store = _store(f"redis://127.0.0.1:{free_port()}/0", "t3")
    try:
        assert not await store.ping()
        start = time.perf_counter()
        for _ in range(10):
            assert await store.user_history("v1", "u1") is None
            assert await store.items("v1", ["1"]) == {}
            assert await store.cache_get("x") is None
            await store.cache_set("x", b"y", 10)
        allowed, _ = await store.take_token("k", rate=1.0, burst=1)
        assert allowed, "rate limiting fails open when Redis is down"
        assert time.perf_counter() - start < 2.0
        assert store.breaker.state == "open"
    finally:
        await store.close()
