"""Query-understanding latency: the service alone (uncached) and its stage in the gateway
(uncached vs cached).

``python -m loadtest.benchmarks.qu_bench --artifacts artifacts [--n 400]`` starts the local
stack (retrieval, query understanding, gateway; in-process store unless ``--redis-url``)
on the CURRENT artifact and measures, one call at a time:

1. ``Understand`` over gRPC, batch 1, every query seen for the first time (the service
   has no cache): the client's latency, with the embedding asked for as the gateway does;
2. ``BatchUnderstand`` of 16 and 64 queries: queries per second;
3. through the gateway: the ``query_understanding`` stage time that a search reports in
   its debug timings, the first time a query is seen (a service call) and again with a
   different ``k`` (the result cache misses, the understanding cache hits);
4. whole searches (the client's latency) on this stack and on a second one without query
   understanding, new queries to both in turn (retrieval then encodes the query itself).

Queries: the 480 REAL WANDS query strings (furniture: out of this catalog's domain, which
is what an unfamiliar query costs) and the artifact's DERIVED test queries, alternating.
Target (issue 18): uncached p99 <= 10 ms at batch 1.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import grpc
import numpy as np
import pyarrow.parquet as pq

from loadtest.local_stack import start_stack
from models_export.dataset_files import wands_queries
from models_export.result_files import write_results
from services.common.artifacts import ArtifactRepository
from services.common.config import data_dir
from services.common.generated.gensearch.query_understanding.v1 import (
    query_understanding_pb2 as qu_pb2,
)
from services.common.generated.gensearch.query_understanding.v1 import (
    query_understanding_pb2_grpc as qu_grpc,
)

TARGET_P99_MS = 10.0


def derived_queries(root: Path, version: str) -> list[str]:
    table = pq.read_table(root / version / "tables" / "queries.parquet").to_pydict()
    return sorted({q for s, q in zip(table["split"], table["query"], strict=True) if s == "test"})


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {
        "n": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
    }


def run(root: Path, n: int, warmup: int, redis_url: str) -> dict[str, Any]:
    arts = ArtifactRepository(root).open()
    real, derived = wands_queries(data_dir()), derived_queries(root, arts.version)
    mixed = [q for pair in zip(real, derived, strict=False) for q in pair]
    queries = list(dict.fromkeys(mixed))[: n + warmup]
    out: dict[str, Any] = {}
    with TemporaryDirectory() as logs, ExitStack() as stack:
        s = start_stack(stack, root, Path(logs), redis_url=redis_url, query_understanding=True)
        assert s.query_understanding is not None
        channel = stack.enter_context(
            grpc.insecure_channel(f"127.0.0.1:{s.query_understanding.port}")
        )
        stub = qu_grpc.QueryUnderstandingServiceStub(channel)
        times: list[float] = []
        for i, q in enumerate(queries):
            request = qu_pb2.UnderstandRequest(query=q, want_embedding=True)
            start = time.perf_counter()
            stub.Understand(request, timeout=5)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        out["understand_batch1"] = latency_stats(times)
        for size in (16, 64):
            batches = [queries[i : i + size] for i in range(0, len(queries) - size + 1, size)]
            start = time.perf_counter()
            for b in batches:
                stub.BatchUnderstand(
                    qu_pb2.BatchUnderstandRequest(
                        requests=[qu_pb2.UnderstandRequest(query=q, want_embedding=True) for q in b]
                    ),
                    timeout=10,
                )
            took = time.perf_counter() - start
            out[f"batch{size}_queries_per_s"] = round(len(batches) * size / took, 1)
        # the gateway: new queries (service call), then the same ones with another k
        fresh = [f"{q} {i}" for i, q in enumerate(queries)]
        stage: dict[str, list[float]] = {"uncached": [], "cached": []}
        for label, k in (("uncached", 5), ("cached", 6)):
            for i, q in enumerate(fresh):
                status, body = s.search(query=q, k=k, debug=True)
                if status == 200 and i >= warmup:
                    stage[label].append(body["timings_ms"]["query_understanding"] / 1000.0)
        out["gateway_stage_uncached"] = latency_stats(stage["uncached"])
        out["gateway_stage_cached"] = latency_stats(stage["cached"])
        # whole searches, with and without the stage: a second stack without it, the same
        # new queries sent to both in turn (every query new to both caches)
        logs_off = Path(logs) / "without"
        logs_off.mkdir()
        off = start_stack(stack, root, logs_off, redis_url=redis_url, query_understanding=False)
        search: dict[str, list[float]] = {"with": [], "without": []}
        for i, q in enumerate(queries):
            for label, target in (("with", s), ("without", off)):
                start = time.perf_counter()
                status, _ = target.search(query=f"{q} search {i}", k=10)
                if status == 200 and i >= warmup:
                    search[label].append(time.perf_counter() - start)
        out["search_with_qu"] = latency_stats(search["with"])
        out["search_without_qu"] = latency_stats(search["without"])
    p99 = out["understand_batch1"]["p99_ms"]
    return {
        "command": f"python -m loadtest.benchmarks.qu_bench --n {n}"
        + (" --redis-url URL" if redis_url else ""),
        "artifact": arts.version,
        "build": arts.manifest.config.get("build", "?"),
        "machine": f"{platform.machine()}, 2 CPU cores, no GPU, CPython "
        f"{platform.python_version()}",
        "store": "redis" if redis_url else "in-process (embedded default)",
        "queries": f"{len(queries) - warmup} distinct queries: REAL WANDS strings and DERIVED "
        f"test queries alternating; {warmup} warm-up calls left out; concurrency 1",
        "target": f"uncached p99 <= {TARGET_P99_MS} ms: "
        + ("MET" if p99 <= TARGET_P99_MS else "NOT MET"),
        **out,
    }


def markdown(doc: dict[str, Any]) -> str:
    def row(name: str, r: dict[str, float]) -> str:
        return f"| {name} | {r['n']} | {r['p50_ms']} | {r['p99_ms']} | {r['mean_ms']} |"

    return (
        "\n".join(
            [
                "# Query understanding: latency",
                "",
                f"Command: `{doc['command']}`  ",
                f"Artifact `{doc['artifact']}` ({doc['build']} build); {doc['queries']}. "
                f"Machine: {doc['machine']}. Store: {doc['store']}.",
                "",
                "| measurement | n | p50 ms | p99 ms | mean ms |",
                "|---|---|---|---|---|",
                row("Understand over gRPC, batch 1, uncached (client)", doc["understand_batch1"]),
                row("gateway stage, first sight (service call)", doc["gateway_stage_uncached"]),
                row("gateway stage, understanding cached", doc["gateway_stage_cached"]),
                row("whole search (client), with query understanding", doc["search_with_qu"]),
                row("whole search (client), without it", doc["search_without_qu"]),
                "",
                f"BatchUnderstand: {doc['batch16_queries_per_s']} queries/s at batch 16, "
                f"{doc['batch64_queries_per_s']} at batch 64.  ",
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
    parser.add_argument(
        "--out", type=Path, default=Path("docs/results/query_understanding_latency")
    )
    args = parser.parse_args(argv)
    doc = run(args.artifacts, args.n, args.warmup, args.redis_url)
    text = markdown(doc)
    print(text)
    write_results(args.out, doc, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
