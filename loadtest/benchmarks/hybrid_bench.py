"""Serving cost of the hybrid sources: ``Retrieve`` latency with and without them.

``python -m loadtest.benchmarks.hybrid_bench --artifacts artifacts [--n 300]`` starts one
retrieval process per configuration on the same artifact (generator only; + BM25;
+ BM25 + dense), then sends the same text queries to each in turn, one call at a time,
interleaved (query i goes to every process before query i+1), so every configuration
sees the same machine load. Prints p50/p99 per configuration and the ratios to the
generator-only one, and writes them to ``docs/results/hybrid_latency.{json,md}``.

Queries: the artifact's DERIVED test queries (category and title, alternating).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from tempfile import TemporaryDirectory

import grpc
import numpy as np
import pyarrow.parquet as pq

from loadtest.local_stack import start_retrieval
from services.common.artifacts import ArtifactRepository
from services.common.generated.gensearch.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc

CONFIGS: dict[str, dict[str, str]] = {
    "generator only": {
        "GENSEARCH_RETRIEVAL_SOURCE_LEXICAL": "false",
        "GENSEARCH_RETRIEVAL_SOURCE_DENSE": "false",
    },
    "generator + BM25": {"GENSEARCH_RETRIEVAL_SOURCE_DENSE": "false"},
    "generator + BM25 + dense (served)": {},
}


def _queries(root: Path, version: str, n: int) -> list[str]:
    table = pq.read_table(root / version / "tables" / "queries.parquet").to_pydict()
    by_kind: dict[str, list[str]] = {}
    for split, kind, text in zip(table["split"], table["kind"], table["query"], strict=True):
        if split == "test":
            by_kind.setdefault(kind, []).append(text)
    lists = [by_kind[k] for k in sorted(by_kind)]
    out = [lists[i % len(lists)][i // len(lists)] for i in range(n)]
    return out


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def run(root: Path, n: int, k: int, warmup: int) -> dict[str, object]:
    arts = ArtifactRepository(root).open()
    queries = _queries(root, arts.version, n + warmup)
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    with TemporaryDirectory() as logs, ExitStack() as stack:
        stubs: dict[str, retrieval_pb2_grpc.RetrievalServiceStub] = {}
        for name, env in CONFIGS.items():
            log_dir = Path(logs) / f"config{len(stubs)}"
            log_dir.mkdir()
            served = start_retrieval(stack, root, log_dir, env)
            channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{served.port}"))
            stubs[name] = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        for i, query in enumerate(queries):
            for name, stub in stubs.items():
                request = retrieval_pb2.RetrieveRequest(query=query, k=k)
                start = time.perf_counter()
                stub.Retrieve(request, timeout=5)
                if i >= warmup:
                    times[name].append(time.perf_counter() - start)
    base = times["generator only"]
    rows = {
        name: {
            "p50_ms": round(_pct(t, 50), 2),
            "p99_ms": round(_pct(t, 99), 2),
            "p50_ratio": round(_pct(t, 50) / _pct(base, 50), 3),
            "p99_ratio": round(_pct(t, 99) / _pct(base, 99), 3),
        }
        for name, t in times.items()
    }
    return {
        "command": f"python -m loadtest.benchmarks.hybrid_bench --n {n} --k {k}",
        "artifact": arts.version,
        "build": arts.manifest.config.get("build", "?"),
        "machine": f"{platform.machine()}, 2 CPU cores, no GPU, CPython "
        f"{platform.python_version()}",
        "queries": f"{n} DERIVED test queries (category and title alternating), "
        f"{warmup} warm-up calls left out, concurrency 1, interleaved across configurations",
        "k": k,
        "rows": rows,
    }


def markdown(doc: dict[str, object]) -> str:
    rows = doc["rows"]
    assert isinstance(rows, dict)
    lines = [
        "# Hybrid candidates: serving cost",
        "",
        f"Command: `{doc['command']}`  ",
        f"Artifact `{doc['artifact']}` ({doc['build']} build); {doc['queries']}; k {doc['k']}. "
        f"Machine: {doc['machine']}. Latency is the client's, over gRPC on loopback.",
        "",
        "| configuration | p50 ms | p99 ms | p50 vs generator only | p99 vs generator only |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['p50_ms']} | {r['p99_ms']} | {r['p50_ratio']:.2f}x | "
            f"{r['p99_ratio']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("docs/results/hybrid_latency"))
    args = parser.parse_args(argv)
    doc = run(args.artifacts, args.n, args.k, args.warmup)
    text = markdown(doc)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    md = args.out.with_suffix(".md")
    marker = "<!-- hand-written notes below are kept when this file is regenerated -->"
    old = md.read_text() if md.is_file() else ""
    notes = old.split(marker, 1)[1] if marker in old else "\n"
    md.write_text(text + "\n" + marker + notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
