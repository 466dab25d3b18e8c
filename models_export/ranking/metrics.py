"""Ranking metrics: AUC, GAUC, NDCG@k / Recall@k of one target, paired bootstrap."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC over all candidates (NaN when only one class is present)."""
    y = np.asarray(labels) > 0
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    # Mann-Whitney U: the probability that a positive outscores a negative (ties count half)
    ranks = rankdata(scores)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def gauc(scores: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> float:
    """Group AUC: per-list AUC weighted by list length, over lists with both classes."""
    total, weight = 0.0, 0
    for s, y in zip(scores, labels, strict=True):
        if len(y) and y.min() != y.max():
            total += auc(s, y) * len(y)
            weight += len(y)
    return total / weight if weight else float("nan")


def target_gains(
    orders: Sequence[Sequence[int]], targets: Sequence[int], k: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Per list: NDCG@k and Recall@k of its single target (0 when not in the top k)."""
    ndcg = np.zeros(len(orders))
    recall = np.zeros(len(orders))
    for i, (order, target) in enumerate(zip(orders, targets, strict=True)):
        top = list(order[:k])
        if target in top:
            rank = top.index(target)
            ndcg[i] = 1.0 / np.log2(rank + 2.0)
            recall[i] = 1.0
    return ndcg, recall


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``a - b`` and its 95 % percentile interval over resampled lists."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(resamples, len(diff)))
    means = diff[idx].mean(axis=1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
