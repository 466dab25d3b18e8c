"""Ranking latency: the service alone (50, 100 and 300 candidates) and its cost in a search.

``python -m loadtest.benchmarks.ranking_bench --artifacts artifacts [--n 400]
[--redis-url URL]`` measures, one call at a time:

1. ``Rank`` over gRPC (a real ranking process; features from the artifact in process, or
   from Redis after the gateway's materialise command with ``--redis-url``): the client's
   latency for lists of 50, 100 and 300 catalog items, known users, the query embedding
   passed as the gateway passes it;
2. whole searches through the gateway on a stack with ranking and on one without, new
   DERIVED test queries to both in turn (the result cache never hits).

Target (issue 19): 100 candidates ranked with p99 <= 10 ms on this CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import grpc
import numpy as np

from loadtest.benchmarks.qu_bench import derived_queries, latency_stats
from loadtest.local_stack import RANKING, start_service, start_stack
from models_export.result_files import write_results
from services.common.artifacts import ArtifactRepository
from services.common.generated.gensearch.common.v1 import common_pb2
from services.common.generated.gensearch.ranking.v1 import ranking_pb2, ranking_pb2_grpc
from services.common.histories import USERS_TABLE, serving_histories
from services.common.text_encoder import TextEncoder
from services.gateway.materialize import materialize_into_redis
from services.ranking.features import FeatureSpec

TARGET_P99_MS = 10.0
SIZES = (50, 100, 300)
PREFIX = "rankbench"


def run(root: Path, n: int, warmup: int, redis_url: str) -> dict[str, Any]:
    arts = ArtifactRepository(root).open()
    spec = FeatureSpec.load(arts.path)
    users = list(serving_histories(arts.path(USERS_TABLE)))
    queries = derived_queries(root, arts.version)[: n + warmup]
    vectors = TextEncoder.load(arts.path).encode(queries)
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    env = {}
    if redis_url:
        asyncio.run(materialize_into_redis(redis_url, PREFIX, arts))
        env = {"GENSEARCH_RANKING_REDIS_URL": redis_url, "GENSEARCH_RANKING_REDIS_PREFIX": PREFIX}
    with TemporaryDirectory() as logs, ExitStack() as stack:
        served = start_service(stack, RANKING, root, Path(logs), env=env)
        channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{served.port}"))
        stub = ranking_pb2_grpc.RankingServiceStub(channel)
        for size in SIZES:
            times: list[float] = []
            for i, (q, v) in enumerate(zip(queries, vectors, strict=True)):
                rows = rng.choice(spec.num_items, size, replace=False)
                request = ranking_pb2.RankRequest(
                    query=q,
                    query_embedding=v.tolist(),
                    user=common_pb2.UserContext(user_id=users[i % len(users)]),
                    candidates=[
                        common_pb2.Candidate(
                            item_id=spec.item_ids[r],
                            sources=[common_pb2.CANDIDATE_SOURCE_GENERATED],
                        )
                        for r in rows
                    ],
                )
                start = time.perf_counter()
                stub.Rank(request, timeout=5)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
            out[f"rank_{size}"] = latency_stats(times)
        search_logs = Path(logs) / "stacks"
        for sub in ("on", "off"):
            (search_logs / sub).mkdir(parents=True)
        on = start_stack(stack, root, search_logs / "on", redis_url=redis_url, ranking=True)
        off = start_stack(stack, root, search_logs / "off", redis_url=redis_url, ranking=False)
        search: dict[str, list[float]] = {"with": [], "without": []}
        for i, q in enumerate(queries):
            for label, target in (("with", on), ("without", off)):
                start = time.perf_counter()
                status, _ = target.search(query=f"{q} {i}", user_id=users[i], k=10)
                if status == 200 and i >= warmup:
                    search[label].append(time.perf_counter() - start)
        out["search_with_ranking"] = latency_stats(search["with"])
        out["search_without_ranking"] = latency_stats(search["without"])
    p99 = out["rank_100"]["p99_ms"]
    return {
        "command": f"python -m loadtest.benchmarks.ranking_bench --n {n}"
        + (" --redis-url URL" if redis_url else ""),
        "artifact": arts.version,
        "build": arts.manifest.config.get("build", "?"),
        "machine": f"{platform.machine()}, 2 CPU cores, no GPU, CPython "
        f"{platform.python_version()}",
        "features": "redis (materialised by the gateway's command)"
        if redis_url
        else "in process from the artifact (embedded default)",
        "queries": f"{len(queries) - warmup} DERIVED test queries, known users, random "
        f"catalog items as candidates; {warmup} warm-up calls left out; concurrency 1",
        "target": f"100 candidates p99 <= {TARGET_P99_MS} ms: "
        + ("MET" if p99 <= TARGET_P99_MS else "NOT MET"),
        **out,
    }


def markdown(doc: dict[str, Any]) -> str:
    def row(name: str, r: dict[str, float]) -> str:
        return f"| {name} | {r['n']} | {r['p50_ms']} | {r['p99_ms']} | {r['mean_ms']} |"

    return (
        "\n".join(
            [
                "# Ranking: latency",
                "",
                f"Command: `{doc['command']}`  ",
                f"Artifact `{doc['artifact']}` ({doc['build']} build); {doc['queries']}. "
                f"Machine: {doc['machine']}. Features: {doc['features']}.",
                "",
                "| measurement | n | p50 ms | p99 ms | mean ms |",
                "|---|---|---|---|---|",
                *(row(f"Rank over gRPC, {s} candidates (client)", doc[f"rank_{s}"]) for s in SIZES),
                row("whole search (client), ranked", doc["search_with_ranking"]),
                row("whole search (client), without ranking", doc["search_without_ranking"]),
                "",
                f"Target: {doc['target']}.",
            ]
        )
        + "\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--out", type=Path, default=Path("docs/results/ranking_latency"))
    args = parser.parse_args(argv)
    doc = run(args.artifacts, args.n, args.warmup, args.redis_url)
    text = markdown(doc)
    print(text)
    write_results(args.out, doc, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
