"""Where the ranking service reads its user and item features.

* :class:`RedisFeatures` -- what the gateway's materialise command wrote
  (:func:`write_features`), read in ONE pipelined round trip per request (GET of the user,
  MGET of the candidates); a Redis failure or timeout is a miss (cold defaults), counted,
  never a failed ranking;
* :class:`ArtifactFeatures` -- the embedded default without Redis: the same values
  computed in process from the artifact's tables.

Keys: ``<prefix>:<version>:rank:user:<user id>`` and ``<prefix>:<version>:rank:item:<item
id>``; values: orjson (``features.encode_user`` / ``encode_item``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.ranking.features import (
    FeatureSpec,
    UserFeatures,
    decode_item,
    decode_user,
    encode_item,
    encode_user,
    history_rows,
    item_features,
    user_features,
)
from services.ranking.metrics import FEATURE_ERRORS

_BATCH = 2000


def user_key(prefix: str, version: str, user_id: str) -> str:
    return f"{prefix}:{version}:rank:user:{user_id}"


def item_key(prefix: str, version: str, item_id: str) -> str:
    return f"{prefix}:{version}:rank:item:{item_id}"


class FeatureReader(Protocol):
    kind: str

    async def fetch(
        self, user_id: str, item_ids: Sequence[str]
    ) -> tuple[UserFeatures | None, list[tuple[float, ...] | None]]:
        """The user's features (None: unknown) and each item's (None: unknown)."""
        ...

    async def close(self) -> None: ...


class ArtifactFeatures:
    """Features computed in process from the artifact (no Redis configured)."""

    kind = "artifact"

    def __init__(self, spec: FeatureSpec, histories: Mapping[str, Sequence[str]]) -> None:
        self.spec = spec
        self.histories = {u: history_rows(spec, h) for u, h in histories.items()}

    async def fetch(
        self, user_id: str, item_ids: Sequence[str]
    ) -> tuple[UserFeatures | None, list[tuple[float, ...] | None]]:
        rows = self.histories.get(user_id) if user_id else None
        user = None if rows is None else user_features(self.spec, rows)
        items: list[tuple[float, ...] | None] = []
        for item_id in item_ids:
            row = self.spec.row_of.get(item_id)
            items.append(None if row is None else item_features(self.spec, row))
        return user, items

    async def close(self) -> None:
        return None


class RedisFeatures:
    """Pipelined reads of the materialised features, with explicit timeouts."""

    kind = "redis"

    def __init__(self, url: str, prefix: str, version: str, timeout_seconds: float) -> None:
        self.client = aioredis.from_url(
            url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self.prefix, self.version = prefix, version

    async def fetch(
        self, user_id: str, item_ids: Sequence[str]
    ) -> tuple[UserFeatures | None, list[tuple[float, ...] | None]]:
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.mget([item_key(self.prefix, self.version, i) for i in item_ids])
                if user_id:  # an anonymous request has no stored features
                    pipe.get(user_key(self.prefix, self.version, user_id))
                raw_items, *raw_user = await pipe.execute()
        except (RedisError, OSError, TimeoutError):
            FEATURE_ERRORS.labels("redis").inc()
            return None, [None] * len(item_ids)
        try:
            user = decode_user(raw_user[0]) if raw_user and raw_user[0] is not None else None
            items = [None if r is None else decode_item(r) for r in raw_items]
        except (ValueError, KeyError, TypeError):
            FEATURE_ERRORS.labels("decode").inc()
            return None, [None] * len(item_ids)
        return user, items

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        await self.client.aclose()


async def write_features(
    client: aioredis.Redis,
    prefix: str,
    version: str,
    spec: FeatureSpec,
    histories: Mapping[str, Sequence[str]],
) -> dict[str, int]:
    """Materialise every item's and user's ranking features (pipelined, in batches). Each
    batch is encoded in a worker thread, so a gateway that materialises while serving
    keeps answering (the encoding of all users took seconds of its event loop)."""
    ids = spec.item_ids
    users = list(histories.items())

    def item_batch(start: int) -> list[tuple[str, bytes]]:
        rows = range(start, min(start + _BATCH, len(ids)))
        return [
            (item_key(prefix, version, ids[r]), encode_item(item_features(spec, r))) for r in rows
        ]

    def user_batch(start: int) -> list[tuple[str, bytes]]:
        return [
            (user_key(prefix, version, u), encode_user(user_features(spec, history_rows(spec, h))))
            for u, h in users[start : start + _BATCH]
        ]

    for make, total in ((item_batch, len(ids)), (user_batch, len(users))):
        for start in range(0, total, _BATCH):
            pairs = await asyncio.to_thread(make, start)
            async with client.pipeline(transaction=False) as pipe:
                for key, value in pairs:
                    pipe.set(key, value)
                await pipe.execute()
    return {"ranking_items": len(ids), "ranking_users": len(users)}
