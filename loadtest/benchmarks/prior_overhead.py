"""What the co-visitation decoding prior costs a history-only request.

``python -m loadtest.benchmarks.prior_overhead [--queries 300] [--beam 20] [--threads 1]``

Batch-1 recommendation requests (test users' real histories, no query text) on the CURRENT
artifact's generator, each decoded twice in alternation, without and with the prior (its
per-node bonus computed per request, as the service does): prints p50 / mean of both and
their ratio, measured in the same run. Needs an artifact whose generator step fitted the
prior (``generator/covisit*``); ``--weight`` overrides the fitted weight (> 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from loadtest.benchmarks.generative_bench import current_subject, make_search
from models_export.evaluation.data import load_from_dir
from services.retrieval.beam_search import SearchOptions
from services.retrieval.covisit import SETTINGS_FILE, TABLE_FILE, CovisitPrior


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    parser.add_argument("--weight", type=float, default=None, help="prior weight override")
    args = parser.parse_args()
    version_dir, subject, _ = current_subject("serving", args.threads)
    prior = CovisitPrior.from_files(version_dir / TABLE_FILE, version_dir / SETTINGS_FILE)
    weight = prior.weight if args.weight is None else args.weight
    if weight <= 0:
        parser.error("the artifact's prior weight is 0: pass --weight to measure one")
    prior = dataclasses.replace(prior, weight=weight)
    data = load_from_dir(version_dir, with_embeddings=False)
    rng = np.random.default_rng(7)
    n_users = len(data.user_ids)
    users = rng.choice(n_users, size=min(args.queries, n_users), replace=False)
    histories = [np.asarray(data.history("test", int(u))[-20:], np.int64) for u in users]
    search = make_search(subject, constrained=True)
    n_rows = len(subject.codes)

    def once(history: np.ndarray, fused: bool) -> float:
        start = time.perf_counter()
        bonus = prior.node_bonus(search.trie, history.tolist(), n_rows) if fused else None
        batch = subject.encoder.encode([None], [history])
        search.search(batch, [SearchOptions(beam_width=args.beam, k=10, node_bonus=bonus)])
        return time.perf_counter() - start

    for i in range(20):  # warm-up, both paths
        once(histories[i % len(histories)], i % 2 == 0)
    plain: list[float] = []
    fused: list[float] = []
    for i, h in enumerate(histories):  # alternate the order: neither side always runs first
        pair = (False, True) if i % 2 == 0 else (True, False)
        for with_prior in pair:
            (fused if with_prior else plain).append(once(h, with_prior))
    p_plain, p_fused = np.median(plain) * 1000, np.median(fused) * 1000
    print(
        f"{len(histories)} history-only test requests, batch 1, beam {args.beam}, "
        f"{args.threads} ORT threads, prior weight {weight:g}: "
        f"without prior p50 {p_plain:.2f} ms (mean {np.mean(plain) * 1000:.2f}), "
        f"with prior p50 {p_fused:.2f} ms (mean {np.mean(fused) * 1000:.2f}); "
        f"ratio p50 {p_fused / p_plain:.3f}, mean {np.mean(fused) / np.mean(plain):.3f}"
    )


if __name__ == "__main__":
    main()
