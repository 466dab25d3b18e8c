"""Load user and item features from an artifact version into the store (like Feast's materialize).

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
from services.gateway.breaker import CircuitBreaker
from services.gateway.store import FeatureStore, ItemFeatures, RedisStore

# The stored history also backs ``exclude_history`` ("leave out what the user already has"),
# so it keeps far more than the 20 recent items retrieval reads: every user of the shared
# log fits (the longest history has 78 items).
MAX_HISTORY = 200
POPULAR_SIZE = 500
_BATCH = 2000


async def materialize(store: FeatureStore, artifacts: ArtifactSet) -> dict[str, int]:
    """Write items, user histories (last ``MAX_HISTORY``) and the popularity list; return counts."""
    version = artifacts.version
    items_table = pq.read_table(artifacts.path("tables/items.parquet")).to_pylist()
    items: dict[str, ItemFeatures] = {
        str(row["item_id"]): {
            "title": row["title"],
            "brand": row["brand"],
            "category": " > ".join(row["categories"] or []),
        }
        for row in items_table
    }
    keys = list(items)
    for start in range(0, len(keys), _BATCH):
        await store.put_items(version, {k: items[k] for k in keys[start : start + _BATCH]})

    users_table = pq.read_table(artifacts.path("tables/users.parquet")).to_pylist()
    counts: Counter[str] = Counter()
    batch: dict[str, list[str]] = {}
    for row in users_table:
        # Serving sees everything the user did; the splits only matter offline.
        history = [*row["train_history"], row["valid_target"], row["test_target"]]
        counts.update(row["train_history"])
        batch[str(row["user_id"])] = [str(i) for i in history[-MAX_HISTORY:]]
        if len(batch) >= _BATCH:
            await store.put_users(version, batch)
            batch = {}
    if batch:
        await store.put_users(version, batch)
    popular = [item for item, _ in counts.most_common(POPULAR_SIZE)]
    await store.put_popular(version, popular)
    return {"items": len(items), "users": len(users_table), "popular": len(popular)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", default="gs")
    parser.add_argument("--artifact-dir", type=Path, default=artifact_root())
    parser.add_argument("--version", default="")
    args = parser.parse_args()

    async def run() -> None:
        artifacts = ArtifactRepository(args.artifact_dir).open(args.version or None)
        store = RedisStore(
            args.redis_url,
            prefix=args.prefix,
            socket_timeout=5.0,
            connect_timeout=2.0,
            max_connections=4,
            breaker=CircuitBreaker("redis", failures=3, reset_seconds=1.0),
        )
        start = time.perf_counter()
        counts = await materialize(store, artifacts)
        await store.close()
        took = time.perf_counter() - start
        print(f"materialized version {artifacts.version}: {counts} in {took:.1f}s")

    asyncio.run(run())


if __name__ == "__main__":
    main()
