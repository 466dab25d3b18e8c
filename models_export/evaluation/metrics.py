"""Item-level ranking metrics with one relevant item per query.

Recall@k is 1 when the target is in the top k (a hit rate, since there is one target).
NDCG@k uses the log2 discount: 1 / log2(rank + 1) for a target at 1-based ``rank <= k``;
with a single relevant item the ideal DCG is 1, so no normalisation term is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RECALL_KS: tuple[int, ...] = (5, 10, 50, 100)
NDCG_KS: tuple[int, ...] = (5, 10)
METRIC_NAMES: tuple[str, ...] = tuple(
    [f"recall@{k}" for k in RECALL_KS] + [f"ndcg@{k}" for k in NDCG_KS]
)
MISSING = 0  # rank value meaning "target not in the returned list"


def target_ranks(ranked: Sequence[Sequence[int]], targets: Sequence[int]) -> np.ndarray:
    """1-based rank of each target in its ranked list; 0 where it is missing."""
    if len(ranked) != len(targets):
        raise ValueError(f"{len(ranked)} ranked lists for {len(targets)} targets")
    ranks = np.zeros(len(targets), dtype=np.int64)
    for i, (items, target) in enumerate(zip(ranked, targets, strict=True)):
        for pos, item in enumerate(items):
            if item == target:
                ranks[i] = pos + 1
                break
    return ranks


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Mean over queries of [target rank <= k]; rank 0 means missing."""
    if ranks.size == 0:
        return float("nan")
    hit = (ranks > 0) & (ranks <= k)
    return float(hit.mean())


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    """Mean over queries of 1/log2(rank+1) for ranks <= k, else 0."""
    if ranks.size == 0:
        return float("nan")
    hit = (ranks > 0) & (ranks <= k)
    gains = np.zeros(ranks.shape, dtype=np.float64)
    gains[hit] = 1.0 / np.log2(ranks[hit].astype(np.float64) + 1.0)
    return float(gains.mean())


def all_metrics(ranks: np.ndarray) -> dict[str, float]:
    """Every reported metric for one set of target ranks."""
    out = {f"recall@{k}": recall_at_k(ranks, k) for k in RECALL_KS}
    out.update({f"ndcg@{k}": ndcg_at_k(ranks, k) for k in NDCG_KS})
    return out


def max_k() -> int:
    """The longest list the metrics need."""
    return max(*RECALL_KS, *NDCG_KS)
