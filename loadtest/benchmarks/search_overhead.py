"""Our constrained beam search alone: latency and its cost above the ONNX forward passes.

``python -m loadtest.benchmarks.search_overhead [--model serving|reference] [--threads 2]``

The quick check behind an optimisation of ``services.retrieval.beam_search``: no HF
reference, no gRPC, just batch-1 searches (beam 20, top 10) over derived test queries
(Ai et al. 2017 category words, real history) on the CURRENT artifact's generator, or on
seeded random weights at the published reference size. It uses only the public
``BeamSearch`` API, so the same file run against an older commit gives a same-machine A/B.
Prints one line; ``generative_bench`` is the full comparison.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from loadtest.benchmarks.generative_bench import (
    current_subject,
    make_search,
    ours_fn,
    test_queries,
)
from models_export.evaluation.data import load_from_dir
from services.retrieval.beam_search import StepTimes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["serving", "reference"], default="serving")
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--spin", action="store_true", help="let ORT worker threads spin")
    parser.add_argument(
        "--encoder-threads", type=int, default=0, help="encoder session threads (0: --threads)"
    )
    args = parser.parse_args()
    version_dir, subject, _ = current_subject(
        args.model, args.threads, args.spin, args.encoder_threads or None
    )
    data = load_from_dir(version_dir, with_embeddings=False)
    queries = test_queries(data, args.queries, seed=7)
    search = make_search(subject, constrained=True)
    run = ours_fn(search, subject.encoder, queries, args.beam)
    for i in range(20):  # warm-up
        run([i % len(queries)])
    search.times = StepTimes()
    latencies = []
    for i in range(len(queries)):
        start = time.perf_counter()
        run([i])
        latencies.append(time.perf_counter() - start)
    times = search.times
    print(
        f"{args.model}: {len(latencies)} queries, batch 1, beam {args.beam}, "
        f"{args.threads} threads{' spinning' if args.spin else ''}: "
        f"p50 {np.median(latencies) * 1000:.2f} ms, "
        f"ONNX {times.model / times.calls * 1000:.2f} ms/query, "
        f"search overhead {100 * times.search_overhead():.1f} %, "
        f"trie lookups {100 * times.trie_share():.1f} %"
    )


if __name__ == "__main__":
    main()
