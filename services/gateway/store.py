"""Feature and cache store: Redis in production, an in-process store as the embedded default.

Keys are prefixed and versioned with the artifact version
(``<prefix>:<version>:user:<id>``); values are compact JSON (orjson), never
pickle. A Redis failure or timeout is a cache miss, counted in metrics, never a
failed search.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.gateway.breaker import CircuitBreaker
from services.gateway.metrics import STORE_ERRORS

ItemFeatures = dict[str, Any]

# Token bucket in one round trip, on Redis' clock so several gateways agree.
_TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil then tokens = burst; ts = now end
tokens = math.min(burst, tokens + (now - ts) / 1000 * rate)
local allowed = 0
local retry_ms = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry_ms = math.ceil((1 - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, retry_ms}
"""


class FeatureStore(Protocol):
    """What the gateway needs from its feature/cache store."""

    kind: str

    async def ping(self) -> bool: ...
    async def user_history(self, version: str, user_id: str) -> list[str] | None: ...
    async def items(self, version: str, item_ids: Sequence[str]) -> dict[str, ItemFeatures]: ...
    async def cache_get(self, key: str) -> bytes | None: ...
    async def cache_set(self, key: str, value: bytes, ttl_seconds: int) -> None: ...
    async def take_token(self, bucket: str, rate: float, burst: int) -> tuple[bool, float]: ...
    async def put_users(self, version: str, users: Mapping[str, Sequence[str]]) -> None: ...
    async def put_items(self, version: str, items: Mapping[str, ItemFeatures]) -> None: ...
    async def popular(self, version: str) -> list[str] | None: ...
    async def put_popular(self, version: str, item_ids: Sequence[str]) -> None: ...
    async def close(self) -> None: ...


class _Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def user(self, version: str, user_id: str) -> str:
        return f"{self.prefix}:{version}:user:{user_id}"

    def item(self, version: str, item_id: str) -> str:
        return f"{self.prefix}:{version}:item:{item_id}"

    def popular(self, version: str) -> str:
        return f"{self.prefix}:{version}:popular"

    def cache(self, key: str) -> str:
        return f"{self.prefix}:cache:{key}"

    def bucket(self, bucket: str) -> str:
        return f"{self.prefix}:ratelimit:{bucket}"


class RedisStore:
    """redis-py asyncio with explicit timeouts, a pool, pipelining/MGET and a breaker."""

    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        socket_timeout: float,
        connect_timeout: float,
        max_connections: int,
        breaker: CircuitBreaker,
    ) -> None:
        self.client = aioredis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            max_connections=max_connections,
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self.keys = _Keys(prefix)
        self.breaker = breaker
        self._bucket = self.client.register_script(_TOKEN_BUCKET_LUA)

    async def _guard(self, op: str, coro: Any) -> Any:
        """Run a Redis call; on failure count it, feed the breaker and return None."""
        if not self.breaker.allow():
            coro.close()
            STORE_ERRORS.labels(op).inc()
            return None
        try:
            result = await coro
        except (RedisError, OSError, TimeoutError):
            self.breaker.failure()
            STORE_ERRORS.labels(op).inc()
            return None
        self.breaker.success()
        return result

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def user_history(self, version: str, user_id: str) -> list[str] | None:
        raw = await self._guard("user", self.client.get(self.keys.user(version, user_id)))
        return None if raw is None else [str(x) for x in orjson.loads(raw)]

    async def items(self, version: str, item_ids: Sequence[str]) -> dict[str, ItemFeatures]:
        if not item_ids:
            return {}
        keys = [self.keys.item(version, i) for i in item_ids]
        raws = await self._guard("items", self.client.mget(keys))
        if raws is None:
            return {}
        return {i: orjson.loads(r) for i, r in zip(item_ids, raws, strict=True) if r is not None}

    async def cache_get(self, key: str) -> bytes | None:
        raw = await self._guard("cache_get", self.client.get(self.keys.cache(key)))
        return None if raw is None else bytes(raw)

    async def cache_set(self, key: str, value: bytes, ttl_seconds: int) -> None:
        if ttl_seconds > 0:
            await self._guard(
                "cache_set", self.client.set(self.keys.cache(key), value, ex=ttl_seconds)
            )

    async def take_token(self, bucket: str, rate: float, burst: int) -> tuple[bool, float]:
        result = await self._guard(
            "ratelimit", self._bucket(keys=[self.keys.bucket(bucket)], args=[rate, burst])
        )
        if result is None:
            return True, 0.0  # fail open: a Redis outage must not lock every client out
        allowed, retry_ms = int(result[0]), int(result[1])
        return bool(allowed), retry_ms / 1000.0

    async def put_users(self, version: str, users: Mapping[str, Sequence[str]]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for user_id, history in users.items():
                pipe.set(self.keys.user(version, user_id), orjson.dumps(list(history)))
            await pipe.execute()

    async def put_items(self, version: str, items: Mapping[str, ItemFeatures]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for item_id, features in items.items():
                pipe.set(self.keys.item(version, item_id), orjson.dumps(features))
            await pipe.execute()

    async def popular(self, version: str) -> list[str] | None:
        raw = await self._guard("popular", self.client.get(self.keys.popular(version)))
        return None if raw is None else [str(x) for x in orjson.loads(raw)]

    async def put_popular(self, version: str, item_ids: Sequence[str]) -> None:
        await self.client.set(self.keys.popular(version), orjson.dumps(list(item_ids)))

    async def close(self) -> None:
        await self.client.aclose()


#: the in-process cache's bound: a long-running gateway must not grow without limit
DEFAULT_CACHE_MAX_BYTES = 32 * 1024 * 1024


class InMemoryStore:
    """The embedded default: the same interface in process memory (one gateway only)."""

    kind = "memory"

    def __init__(self, cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES) -> None:
        self._users: dict[tuple[str, str], list[str]] = {}
        self._items: dict[tuple[str, str], ItemFeatures] = {}
        # insertion-ordered: the oldest entries go first when the cache is over its bytes
        self._cache: dict[str, tuple[float, bytes]] = {}
        self._cache_bytes = 0
        self.cache_max_bytes = cache_max_bytes
        self._buckets: dict[str, tuple[float, float]] = {}
        self._popular: dict[str, list[str]] = {}

    async def ping(self) -> bool:
        return True

    async def user_history(self, version: str, user_id: str) -> list[str] | None:
        history = self._users.get((version, user_id))
        return None if history is None else list(history)

    async def items(self, version: str, item_ids: Sequence[str]) -> dict[str, ItemFeatures]:
        return {i: self._items[(version, i)] for i in item_ids if (version, i) in self._items}

    async def cache_get(self, key: str) -> bytes | None:
        entry = self._cache.get(key)
        if entry is None or entry[0] < time.monotonic():
            self._drop(key)
            return None
        return entry[1]

    def _drop(self, key: str) -> None:
        entry = self._cache.pop(key, None)
        if entry is not None:
            self._cache_bytes -= len(key) + len(entry[1])

    async def cache_set(self, key: str, value: bytes, ttl_seconds: int) -> None:
        if ttl_seconds <= 0 or len(key) + len(value) > self.cache_max_bytes:
            return
        self._drop(key)
        self._cache[key] = (time.monotonic() + ttl_seconds, value)
        self._cache_bytes += len(key) + len(value)
        while self._cache_bytes > self.cache_max_bytes:  # oldest first
            self._drop(next(iter(self._cache)))

    @property
    def cache_bytes(self) -> int:
        """Bytes of keys and values held by the result / understanding cache."""
        return self._cache_bytes

    async def take_token(self, bucket: str, rate: float, burst: int) -> tuple[bool, float]:
        now = time.monotonic()
        tokens, ts = self._buckets.get(bucket, (float(burst), now))
        tokens = min(float(burst), tokens + (now - ts) * rate)
        if tokens >= 1:
            self._buckets[bucket] = (tokens - 1, now)
            return True, 0.0
        self._buckets[bucket] = (tokens, now)
        return False, math.ceil((1 - tokens) / rate * 1000) / 1000.0

    async def put_users(self, version: str, users: Mapping[str, Sequence[str]]) -> None:
        for user_id, history in users.items():
            self._users[(version, user_id)] = list(history)

    async def put_items(self, version: str, items: Mapping[str, ItemFeatures]) -> None:
        for item_id, features in items.items():
            self._items[(version, item_id)] = dict(features)

    async def popular(self, version: str) -> list[str] | None:
        items = self._popular.get(version)
        return None if items is None else list(items)

    async def put_popular(self, version: str, item_ids: Sequence[str]) -> None:
        self._popular[version] = list(item_ids)

    async def close(self) -> None:
        return None
