"""Gateway overhead benchmark: ``/v1/search`` vs. the retrieval service called directly.

``python -m loadtest.benchmarks.gateway_bench [--requests 300] [--concurrency 1 8 32]``

Starts the local stack (retrieval + gateway only: query understanding and ranking
off, since the pass-through and the direct client call retrieval alone; in-process
feature store unless ``--redis-url``) on the CURRENT artifact, with the result cache
off so every request runs the whole path. The overhead with those stages on is not
measured here yet. Queries are DERIVED (Ai et al. 2017 category-path
queries of the test split) with the user's real history. Prints a table and
writes ``docs/results/gateway_benchmark.{md,json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import platform
import socket
import statistics
import tempfile
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from loadtest.benchmarks.workload import load_workload, retrieve_call, run_rounds
from loadtest.local_stack import (
    REPO_ROOT,
    Stack,
    free_port,
    running_process,
    start_stack,
    wait_for,
)
from models_export import result_files
from services.common.artifacts import ArtifactRepository
from services.common.config import artifact_root
from services.common.generated.gensearch.retrieval.v1 import retrieval_pb2_grpc

RESULTS = REPO_ROOT / "docs" / "results"
TIMEOUT_MS = 2000


async def bench(
    base: str,
    passthrough: str,
    rport: int,
    work: list[Any],
    levels: list[int],
    references: bool = True,
) -> list[dict[str, Any]]:
    """Rows per target and level; ``references``: also retrieval called directly and the
    HTTP floor (the stage configurations compare the gateway with the pass-through only)."""
    rows: list[dict[str, Any]] = []
    # aiohttp (C HTTP parser): with httpx the client itself cost more than the gateway's
    # trivial routes and saturated a core at concurrency 32.
    connector = aiohttp.TCPConnector(limit=64)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as http:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{rport}")
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)

        async def via_gateway(item: tuple[str, str, list[str]]) -> bool:
            query, user, _ = item
            body = {"query": query, "user_id": user, "k": 10, "timeout_ms": TIMEOUT_MS}
            async with http.post("/v1/search", json=body) as reply:
                payload = await reply.json()
                return reply.status == 200 and not payload["degraded"]

        direct = retrieve_call(stub, TIMEOUT_MS / 1000)

        async def via_passthrough(item: tuple[str, str, list[str]]) -> bool:
            # The same history the direct client sends (the gateway reads its own store).
            query, user, history = item
            body = {"query": query, "user_id": user, "history": history, "k": 10}
            async with http.post(passthrough + "/", json=body) as reply:
                payload = await reply.json()
                return reply.status == 200 and not payload["degraded"]

        async def floor(_item: object) -> bool:
            # The HTTP floor: this client + uvicorn + FastAPI routing for a trivial route.
            async with http.get("/healthz") as reply:
                await reply.read()
                return reply.status == 200

        for warm in work[:20]:  # warm both paths
            await via_gateway(warm)
            await via_passthrough(warm)
            await direct(warm)
        targets: list[tuple[str, Callable[[Any], Awaitable[bool]]]] = [
            ("retrieval (gRPC, direct)", direct),
            ("gateway /v1/search", via_gateway),
            ("pass-through HTTP -> gRPC", via_passthrough),
            ("HTTP floor: GET /healthz", floor),
        ]
        if not references:
            targets = targets[1:3]
        for level in levels:
            for name, stats in (await run_rounds(targets, work, level)).items():
                rows.append({"target": name, "concurrency": level, **stats})
                print(
                    f"{name:26s} c={level:<3d} rps={stats['rps']:7.1f} "
                    f"p50={stats['p50_ms']:7.2f} ms p99={stats['p99_ms']:7.2f} ms "
                    f"errors={int(stats['errors'])}"
                )
        await channel.close()
    return rows


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def write_results(rows: list[dict[str, Any]], args: argparse.Namespace, version: str) -> None:
    levels = sorted({r["concurrency"] for r in rows})
    lines = [
        "# Gateway overhead benchmark",
        "",
        f"Command: `python -m loadtest.benchmarks.gateway_bench --requests {args.requests} "
        f"--concurrency {' '.join(map(str, args.concurrency))}`",
        "",
        "Measured: the retrieval service called directly over gRPC; the gateway's "
        "`POST /v1/search`; a bare HTTP -> gRPC pass-through (`loadtest/benchmarks/"
        "passthrough.py`: one ASGI callable under the same uvicorn, no framework, no "
        "validation, no store; the client sends the history), which measures what the extra "
        "hop itself costs; `GET /healthz` of the gateway, the HTTP floor of a trivial route.",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), all processes (client, "
        f"gateway, retrieval) on the same machine. Artifact `{version}`. Queries: DERIVED "
        "category-path queries (Ai et al. 2017) of the test split with each user's real "
        "history; result cache off, k=10, default beam. Each level runs the targets in 4 "
        "interleaved rounds (order rotated) so that load drift hits all alike. Client: one "
        "asyncio process (aiohttp for HTTP, grpc.aio for gRPC).",
        "",
        "| target | concurrency | req/s | p50 ms | p99 ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['concurrency']} | {r['rps']:.1f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {int(r['errors'])} |"
        )
    lines += [
        "",
        "Gateway overhead = (gateway p50 − retrieval p50) / gateway p50; the pass-through's "
        "share is the part any HTTP front in Python pays here, the rest is the gateway's own:",
        "",
    ]
    overhead, hop = {}, {}
    for level in levels:
        gw = next(
            r for r in rows if r["concurrency"] == level and r["target"].startswith("gateway")
        )
        floor = next(
            r for r in rows if r["concurrency"] == level and r["target"].startswith("HTTP")
        )
        rt = next(r for r in rows if r["concurrency"] == level and r["target"].startswith("retr"))
        pt = next(r for r in rows if r["concurrency"] == level and r["target"].startswith("pass"))
        overhead[level] = (gw["p50_ms"] - rt["p50_ms"]) / gw["p50_ms"]
        hop[level] = (pt["p50_ms"] - rt["p50_ms"]) / gw["p50_ms"]
        lines.append(
            f"- concurrency {level}: {overhead[level] * 100:.1f} %, of which the bare "
            f"pass-through hop {hop[level] * 100:.1f} % and the gateway's own work "
            f"{(overhead[level] - hop[level]) * 100:.1f} % (HTTP floor, client included: "
            f"{floor['p50_ms']:.2f} ms = {floor['p50_ms'] / gw['p50_ms'] * 100:.1f} % "
            "of the gateway p50)"
        )
    doc = {"version": version, "rows": rows, "overhead_p50": overhead, "hop_p50": hop}
    result_files.write_results(RESULTS / "gateway_benchmark", doc, "\n".join(lines))
    print("\n".join(lines[-len(levels) - 2 :]))


def start_passthrough(stack: ExitStack, s: Stack, logs: Path) -> str:
    """The pass-through beside ``s``, calling the same services the stack's gateway calls;
    its base URL once it listens."""
    port = free_port()
    cmd = ["-m", "loadtest.benchmarks.passthrough", "--port", str(port)]
    cmd += ["--retrieval", f"127.0.0.1:{s.retrieval_port}"]
    if s.query_understanding is not None:
        cmd += ["--query-understanding", f"127.0.0.1:{s.query_understanding.port}"]
    if s.ranking is not None:
        cmd += ["--ranking", f"127.0.0.1:{s.ranking.port}"]
    stack.enter_context(running_process(cmd, {}, logs / "passthrough.log"))
    wait_for(functools.partial(_accepts, port), 30, "pass-through listening")
    return f"http://127.0.0.1:{port}"


#: cumulative stage configurations of ``--stages``
STAGE_CONFIGS: tuple[tuple[str, bool, bool], ...] = (
    ("retrieval", False, False),
    ("+ query understanding", True, False),
    ("+ query understanding + ranking", True, True),
)
OWN_WORK_TARGET = 0.05


def run_stages(args: argparse.Namespace, work: list[Any]) -> list[dict[str, Any]]:
    """Each configuration: a stack with those stages and a pass-through making the same
    calls; rows of the gateway and the pass-through at each level."""
    rows: list[dict[str, Any]] = []
    for name, with_qu, with_ranking in STAGE_CONFIGS:
        with ExitStack() as stack, tempfile.TemporaryDirectory() as logs:
            s = start_stack(
                stack,
                args.artifact_dir,
                Path(logs),
                redis_url=args.redis_url,
                # every request runs every stage: no result or understanding cache
                gateway_env={
                    "GENSEARCH_GATEWAY_RESULT_CACHE_TTL_SECONDS": "0",
                    "GENSEARCH_GATEWAY_QU_CACHE_TTL_SECONDS": "0",
                },
                query_understanding=with_qu,
                ranking=with_ranking,
            )
            passthrough = start_passthrough(stack, s, Path(logs))
            found = asyncio.run(
                bench(s.base, passthrough, s.retrieval_port, work, args.concurrency, False)
            )
            rows += [{"stages": name, **r} for r in found]
    return rows


def write_stage_results(rows: list[dict[str, Any]], args: argparse.Namespace, version: str) -> None:
    """The gateway's own work (gateway p50 - pass-through p50, as a share of the gateway
    p50) per stage configuration and level."""
    lines = [
        "# Gateway overhead as stages are added",
        "",
        f"Command: `python -m loadtest.benchmarks.gateway_bench --stages --requests "
        f"{args.requests} --concurrency {' '.join(map(str, args.concurrency))}`",
        "",
        "Per configuration, the gateway's `POST /v1/search` against a bare HTTP -> gRPC "
        "pass-through that makes the same downstream calls in the same order "
        "(`loadtest/benchmarks/passthrough.py`: Understand, Retrieve, Rank; no framework, "
        "validation, store or cache); result and understanding caches off, so every request "
        "runs every stage. The gateway's own work = (gateway p50 - pass-through p50) / "
        f"gateway p50; target <= {OWN_WORK_TARGET:.0%}.",
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), everything on one "
        f"machine. Artifact `{version}`. Queries: DERIVED test-split queries with the users' "
        "real histories; interleaved rounds.",
        "",
        "| stages | concurrency | gateway p50 ms | pass-through p50 ms | gateway p99 ms "
        "| own work | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    own: dict[str, dict[int, float]] = {}
    for name, _, _ in STAGE_CONFIGS:
        for level in args.concurrency:
            mine = [r for r in rows if r["stages"] == name and r["concurrency"] == level]
            gw = next(r for r in mine if r["target"].startswith("gateway"))
            pt = next(r for r in mine if r["target"].startswith("pass"))
            share = (gw["p50_ms"] - pt["p50_ms"]) / gw["p50_ms"]
            own.setdefault(name, {})[level] = share
            lines.append(
                f"| {name} | {level} | {gw['p50_ms']:.2f} | {pt['p50_ms']:.2f} | "
                f"{gw['p99_ms']:.2f} | {share:+.1%} | {int(gw['errors'] + pt['errors'])} |"
            )
    met = all(v <= OWN_WORK_TARGET for by_level in own.values() for v in by_level.values())
    lines += [
        "",
        f"Target (own work <= {OWN_WORK_TARGET:.0%} everywhere): "
        + ("MET" if met else "NOT MET")
        + ".",
    ]
    doc = {"version": version, "rows": rows, "own_work_p50": own, "target_met": met}
    result_files.write_results(RESULTS / "gateway_overhead_stages", doc, "\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--artifact-dir", type=Path, default=artifact_root())
    parser.add_argument("--redis-url", default="")
    parser.add_argument(
        "--stages",
        action="store_true",
        help="instead: the gateway's own work with retrieval, + query understanding, + ranking",
    )
    args = parser.parse_args()
    work = load_workload(args.artifact_dir, args.requests)
    version = ArtifactRepository(args.artifact_dir).current()
    if args.stages:
        write_stage_results(run_stages(args, work), args, version)
        return
    with ExitStack() as stack, tempfile.TemporaryDirectory() as logs:
        s = start_stack(
            stack,
            args.artifact_dir,
            Path(logs),
            redis_url=args.redis_url,
            gateway_env={"GENSEARCH_GATEWAY_RESULT_CACHE_TTL_SECONDS": "0"},
            # the hop being measured is gateway -> retrieval: the pass-through and the direct
            # client call retrieval only, so the gateway must not add other stages
            query_understanding=False,
            ranking=False,
        )
        passthrough = start_passthrough(stack, s, Path(logs))
        rows = asyncio.run(bench(s.base, passthrough, s.retrieval_port, work, args.concurrency))
    write_results(rows, args, version)
    print(f"median gateway p50 over levels: {statistics.median(r['p50_ms'] for r in rows):.2f} ms")


if __name__ == "__main__":
    main()
