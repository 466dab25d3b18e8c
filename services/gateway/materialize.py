"""Load user and item features from an artifact version into the store (like Feast's materialize),
and the ranking service's features (``services.ranking.store``) when the version has a ranker.

``python -m services.gateway.materialize --redis-url redis://127.0.0.1:6379/0``
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from services.common.artifacts import ArtifactRepository, ArtifactSet
from services.common.config import artifact_root
from services.common.histories import USERS_TABLE, serving_histories
from services.gateway.breaker import CircuitBreaker
from services.gateway.store import FeatureStore, ItemFeatures, RedisStore
from services.ranking.features import FEATURES_FILE, FeatureSpec
from services.ranking.store import write_features

# The stored history also backs ``exclude_history`` ("leave out what the user already has"),
# so it keeps far more than the 20 recent items retrieval reads: every user of the shared
# log fits (the longest history has 78 items).
MAX_HISTORY = 200
POPULAR_SIZE = 500
_BATCH = 2000


def _load(
    artifacts: ArtifactSet,
) -> tuple[dict[str, ItemFeatures], dict[str, list[str]], Counter[str]]:
    """Item fields, serving histories and training-history counts of ``artifacts``."""
    items_table = pq.read_table(artifacts.path("tables/items.parquet")).to_pylist()
    items: dict[str, ItemFeatures] = {
        str(row["item_id"]): {
            "title": row["title"],
            "brand": row["brand"],
            "category": " > ".join(row["categories"] or []),
        }
        for row in items_table
    }
    histories = serving_histories(artifacts.path(USERS_TABLE))
    counts: Counter[str] = Counter()
    for row in pq.read_table(artifacts.path(USERS_TABLE), columns=["train_history"]).to_pylist():
        counts.update(row["train_history"])
    return items, histories, counts


async def materialize(store: FeatureStore, artifacts: ArtifactSet) -> dict[str, int]:
    """Write items, user histories (last ``MAX_HISTORY``) and the popularity list; return counts."""
    version = artifacts.version
    # file reads and row building in a worker thread: a gateway that materialises again
    # (Redis came back empty) keeps serving meanwhile
    items, histories, counts = await asyncio.to_thread(_load, artifacts)
    keys = list(items)
    for start in range(0, len(keys), _BATCH):
        await store.put_items(version, {k: items[k] for k in keys[start : start + _BATCH]})
    users = list(histories.items())
    for start in range(0, len(users), _BATCH):
        await store.put_users(
            version, {u: h[-MAX_HISTORY:] for u, h in users[start : start + _BATCH]}
        )
    done = {"items": len(items), "users": len(users)}
    if isinstance(store, RedisStore) and artifacts.has(FEATURES_FILE):
        # the ranking service's features, in the same Redis under the same prefix (the
        # in-process store is one gateway's own: without Redis, ranking computes them)
        spec = await asyncio.to_thread(FeatureSpec.load, artifacts.path)
        done |= await write_features(store.client, store.keys.prefix, version, spec, histories)
    # written last: the gateway takes its presence as "this version is materialised"
    popular = [item for item, _ in counts.most_common(POPULAR_SIZE)]
    await store.put_popular(version, popular)
    return {**done, "popular": len(popular)}


async def materialize_into_redis(url: str, prefix: str, artifacts: ArtifactSet) -> dict[str, int]:
    """What the command does: :func:`materialize` into the Redis at ``url`` under ``prefix``
    (generous timeouts: a bulk load, not a request path)."""
    store = RedisStore(
        url,
        prefix=prefix,
        socket_timeout=5.0,
        connect_timeout=2.0,
        max_connections=4,
        breaker=CircuitBreaker("redis", failures=3, reset_seconds=1.0),
    )
    try:
        return await materialize(store, artifacts)
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", default="gs")
    parser.add_argument("--artifact-dir", type=Path, default=artifact_root())
    parser.add_argument("--version", default="")
    args = parser.parse_args()
    artifacts = ArtifactRepository(args.artifact_dir).open(args.version or None)
    start = time.perf_counter()
    counts = asyncio.run(materialize_into_redis(args.redis_url, args.prefix, artifacts))
    took = time.perf_counter() - start
    print(f"materialized version {artifacts.version}: {counts} in {took:.1f}s")


if __name__ == "__main__":
    main()
