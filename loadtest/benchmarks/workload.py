"""Shared load-generation pieces of the benchmarks: the workload, a closed loop, summaries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow.parquet as pq

from services.common.artifacts import ArtifactRepository
from services.common.generated.gensearch.common.v1 import common_pb2
from services.common.generated.gensearch.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc

HISTORY = 50

WorkItem = tuple[str, str, list[str]]


def load_workload(root: Path, n: int, version: str | None = None) -> list[WorkItem]:
    """(query, user_id, history) triples from the test split (queries are derived)."""
    arts = ArtifactRepository(root).open(version)
    queries = pq.read_table(arts.path("tables/queries.parquet")).to_pylist()
    users = {
        r["user_id"]: [*r["train_history"], r["valid_target"]]
        for r in pq.read_table(arts.path("tables/users.parquet")).to_pylist()
    }
    picked = [q for q in queries if q["split"] == "test" and q["kind"] == "category"][:n]
    return [(q["query"], q["user_id"], users[q["user_id"]][-HISTORY:]) for q in picked]


def summarise(latencies: list[float], errors: int, wall: float) -> dict[str, float]:
    arr = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies) + errors,
        "errors": errors,
        "rps": len(latencies) / wall if wall > 0 else 0.0,
        "p50_ms": float(np.percentile(arr, 50)) if len(arr) else float("nan"),
        "p99_ms": float(np.percentile(arr, 99)) if len(arr) else float("nan"),
        "mean_ms": float(arr.mean()) if len(arr) else float("nan"),
    }


Call = Callable[[Any], Awaitable[bool]]


async def _closed_loop(
    call: Call, work: Sequence[Any], concurrency: int
) -> tuple[list[float], int, float]:
    """``concurrency`` workers share ``work``: (latencies of successes, errors, wall seconds)."""
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for item in work:
        queue.put_nowait(item)

    async def worker() -> None:
        nonlocal errors
        while not queue.empty():
            item = queue.get_nowait()
            start = time.perf_counter()
            ok = await call(item)
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1

    wall = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - wall


async def run_level(call: Call, work: Sequence[Any], concurrency: int) -> dict[str, float]:
    """Closed loop: ``concurrency`` workers share ``work``; latency of each successful call."""
    return summarise(*await _closed_loop(call, work, concurrency))


async def run_rounds(
    calls: Sequence[tuple[str, Call]], work: Sequence[Any], concurrency: int, rounds: int = 4
) -> dict[str, dict[str, float]]:
    """Compare ``calls`` fairly on a noisy machine: ``work`` is cut into ``rounds`` slices
    and each slice runs every call in turn (order rotated per round), so that drift in the
    machine's load hits all of them alike. Statistics pool the rounds."""
    pooled: dict[str, tuple[list[float], int, float]] = {name: ([], 0, 0.0) for name, _ in calls}
    size = max(1, len(work) // rounds)
    for r in range(rounds):
        chunk = work[r * size : (r + 1) * size]
        order = list(calls[r % len(calls) :]) + list(calls[: r % len(calls)])
        for name, call in order:
            lat, err, wall = await _closed_loop(call, chunk, concurrency)
            prev = pooled[name]
            pooled[name] = (prev[0] + lat, prev[1] + err, prev[2] + wall)
    return {name: summarise(*pooled[name]) for name, _ in calls}


def retrieve_call(
    stub: retrieval_pb2_grpc.RetrievalServiceStub, timeout: float, k: int = 10
) -> Callable[[WorkItem], Awaitable[bool]]:
    """A call for :func:`run_level`: one ``Retrieve``; success = answered without degradation."""

    async def call(item: WorkItem) -> bool:
        query, user, history = item
        request = retrieval_pb2.RetrieveRequest(
            query=query,
            user=common_pb2.UserContext(user_id=user, recent_item_ids=history),
            k=k,
        )
        try:
            reply = await stub.Retrieve(request, timeout=timeout)
        except grpc.RpcError:
            return False
        return len(reply.degraded) == 0

    return call
