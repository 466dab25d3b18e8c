"""RAG rerank latency: 20 documents of up to 256 tokens per call, per variant and thread
count, over gRPC to a real ``services.rag_rerank`` process.

``python -m loadtest.benchmarks.rag_bench --artifacts artifacts [--n 300]`` sends, one call
at a time, the artifact's DERIVED test questions (``rag/questions.jsonl``) with 20 catalog
documents each, every one long enough to be cut at the model's 256-token limit (the worst
case the target names), and reports the client's p50 / p99 for the fp32 and int8 graphs at
1 and 2 intra-op threads, plus the same for 20 item ids resolved to their passages.

Target (issue 20): 20 documents of up to 256 tokens scored with p99 <= 50 ms on this CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from contextlib import ExitStack
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import grpc
import numpy as np
import pyarrow.parquet as pq

from loadtest.benchmarks.qu_bench import latency_stats
from loadtest.local_stack import RAG_RERANK, start_service
from models_export.result_files import write_results
from services.common.artifacts import ArtifactRepository
from services.common.generated.gensearch.rag_rerank.v1 import rag_rerank_pb2 as pb
from services.common.generated.gensearch.rag_rerank.v1 import rag_rerank_pb2_grpc

TARGET_P99_MS = 50.0
DOCS = 20
CONFIGS = (("int8", 2), ("int8", 1), ("fp32", 2), ("fp32", 1))


def _long_texts(root: Path, version: str, count: int) -> list[str]:
    """Catalog texts (title + description, repeated) of at least ~300 words each."""
    arts = ArtifactRepository(root).open(version)
    t = pq.read_table(arts.path("tables/items.parquet"), columns=["title", "description"])
    out = []
    for title, desc in zip(t["title"].to_pylist(), t["description"].to_pylist(), strict=True):
        text = f"{title} {desc or ''}".strip()
        while len(text.split()) < 300:
            text = f"{text} {text}"
        out.append(text)
        if len(out) >= count:
            break
    return out


def run(root: Path, n: int, warmup: int) -> dict[str, Any]:
    arts = ArtifactRepository(root).open()
    rows = [json.loads(line) for line in arts.path("rag/questions.jsonl").read_text().splitlines()]
    questions = [r["text"] for r in rows if r["split"] == "test"] or [r["text"] for r in rows]
    item_ids = list(dict.fromkeys(r["item_id"] for r in rows))
    texts = _long_texts(root, arts.version, 400)
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    with TemporaryDirectory() as logs:
        for variant, threads in CONFIGS:
            env = {
                "GENSEARCH_RAG_RERANK_VARIANT": variant,
                "GENSEARCH_RAG_RERANK_INTRA_OP_THREADS": str(threads),
            }
            with ExitStack() as stack:
                served = start_service(
                    stack, RAG_RERANK, root, Path(logs), env=env, log_name=f"{variant}.log"
                )
                channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{served.port}"))
                stub = rag_rerank_pb2_grpc.RagRerankServiceStub(channel)
                for mode in ("text", "items"):
                    times: list[float] = []
                    truncated = 0
                    for i in range(n + warmup):
                        q = questions[i % len(questions)]
                        if mode == "text":
                            pick = rng.choice(len(texts), DOCS, replace=False)
                            docs = [pb.Document(text=texts[j][:3900]) for j in pick]
                        else:
                            pick = rng.choice(len(item_ids), DOCS // 3, replace=False)
                            docs = [pb.Document(item_id=item_ids[j]) for j in pick]
                        request = pb.RerankRequest(query=q, documents=docs)
                        start = time.perf_counter()
                        reply = stub.Rerank(request, timeout=10)
                        if i >= warmup:
                            times.append(time.perf_counter() - start)
                            truncated += sum(d.truncated for d in reply.documents)
                    stats = latency_stats(times)
                    stats["documents_per_call"] = len(reply.documents)
                    stats["truncated_share"] = round(
                        truncated / (len(times) * len(reply.documents)), 3
                    )
                    out[f"{variant}_t{threads}_{mode}"] = stats
    best = out["int8_t2_text"]["p99_ms"]
    return {
        "command": f"python -m loadtest.benchmarks.rag_bench --n {n}",
        "artifact": arts.version,
        "machine": f"{platform.machine()}, 2 CPU cores, no GPU, CPython "
        f"{platform.python_version()}",
        "queries": f"{n} DERIVED test questions per row, {warmup} warm-up calls left out; "
        "concurrency 1; 'text': 20 catalog texts of 300+ words each (cut at 256 tokens); "
        "'items': 6 item ids resolved to their passages (up to 18 documents)",
        "target": f"20 documents of up to 256 tokens, p99 <= {TARGET_P99_MS} ms (int8, 2 "
        "threads): " + ("MET" if best <= TARGET_P99_MS else "NOT MET") + f" ({best} ms)",
        **out,
    }


def markdown(doc: dict[str, Any]) -> str:
    rows = [
        f"| {v} | {t} | {mode} | {r['documents_per_call']} | {r['truncated_share']} | "
        f"{r['p50_ms']} | {r['p99_ms']} | {r['mean_ms']} |"
        for v, t in CONFIGS
        for mode in ("text", "items")
        if (r := doc[f"{v}_t{t}_{mode}"])
    ]
    return (
        "\n".join(
            [
                "# RAG rerank: latency",
                "",
                f"Command: `{doc['command']}`  ",
                f"Artifact `{doc['artifact']}`; {doc['queries']}. Machine: {doc['machine']}.",
                "",
                "| variant | threads | documents | per call | truncated share | p50 ms | "
                "p99 ms | mean ms |",
                "|---|---|---|---|---|---|---|---|",
                *rows,
                "",
                f"Target: {doc['target']}.",
            ]
        )
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("docs/results/rag_latency"))
    args = parser.parse_args()
    doc = run(args.artifacts, args.n, args.warmup)
    json_path, md_path = write_results(args.out, doc, markdown(doc))
    print(markdown(doc))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
