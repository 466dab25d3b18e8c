"""GRADE fusion maths: objective blending, the relevance floor, exploration.

GRADE (Kuaishou mall search) orders results by a blend of several objective predictions
with per-user weights w on the simplex. Two blends are supported:

* ``additive``: sum_i w_i * z_i, where z_i is objective i's prediction standardised within
  the list (the objectives' probabilities live on different scales -- conversion among
  50 candidates is about 0.02, relevance about 0.5 -- and a raw sum would let the largest
  scale win whatever the weights);
* ``multiplicative``: prod_i p_i ** w_i, computed as sum_i w_i * log p_i.

The relevance floor: a candidate whose predicted relevance is below ``floor`` is placed
after every candidate above it, whatever the weights (no weighting can override it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: the objectives in the order of the score columns; the model predicts the first three;
#: ``popularity`` (training-history interactions, log-scaled to [0, 1]) and ``retrieval``
#: (the retriever's rank discount 1 / log2(rank + 2)) are priors the blend may weigh, so
#: a weighting can always fall back to the retrieval order
OBJECTIVES: tuple[str, ...] = ("conversion", "relevance", "affinity", "popularity", "retrieval")
PREDICTED: tuple[str, ...] = OBJECTIVES[:3]
RELEVANCE = OBJECTIVES.index("relevance")
BLENDS: tuple[str, ...] = ("additive", "multiplicative")
_EPS = 1e-6


def blend_basis(scores: np.ndarray, blend: str) -> np.ndarray:
    """What the weights multiply: ``scores`` [..., C, T] probabilities -> [..., C, T]
    standardised within the list (additive) or log-probabilities (multiplicative)."""
    p = np.clip(np.asarray(scores, dtype=np.float64), _EPS, 1.0 - _EPS)
    if blend == "multiplicative":
        return np.log(p)
    if blend != "additive":
        raise ValueError(f"unknown blend {blend!r}; expected one of {BLENDS}")
    mean = p.mean(axis=-2, keepdims=True)
    std = p.std(axis=-2, keepdims=True)
    return (p - mean) / (std + _EPS)


def blend_scores(scores: np.ndarray, weights: np.ndarray, blend: str) -> np.ndarray:
    """Blended score per candidate: ``scores`` [..., C, T], ``weights`` [..., T] -> [..., C]."""
    return np.einsum("...ct,...t->...c", blend_basis(scores, blend), weights)


def order(
    scores: np.ndarray, weights: np.ndarray, blend: str, floor: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(final score, order best first) of one list: ``scores`` [C, T], ``weights`` [T].
    Candidates under the relevance floor come after all others, each group by score."""
    final = blend_scores(scores, weights, blend)
    key = final + floor_penalty(scores, floor)
    return final, np.argsort(-key, kind="stable")


def floor_penalty(scores: np.ndarray, floor: float) -> np.ndarray:
    """[..., C] a large negative offset for candidates under the relevance floor."""
    return np.where(scores[..., RELEVANCE] < floor, -1e9, 0.0)


def dirichlet_around(
    mean: np.ndarray, concentration: float, samples: int, rng: np.random.Generator
) -> np.ndarray:
    """``samples`` weight vectors from Dirichlet(concentration * mean) [S, T]: GRADE's
    group-wise exploration around the policy's output."""
    alpha = np.maximum(np.asarray(mean, dtype=np.float64) * concentration, 1e-3)
    return rng.dirichlet(alpha, size=samples)


def normalise_weights(weights: Sequence[float]) -> np.ndarray:
    """Non-negative weights scaled to sum to 1 (uniform when all are zero)."""
    w = np.maximum(np.asarray(weights, dtype=np.float64), 0.0)
    total = float(w.sum())
    return w / total if total > 0 else np.full(len(w), 1.0 / len(w))


def simplex_grid(dims: int, step: float) -> np.ndarray:
    """Every weight vector on the simplex with coordinates multiples of ``step`` [G, dims]."""
    n = round(1.0 / step)
    out: list[list[float]] = []

    def rec(prefix: list[int], left: int) -> None:
        if len(prefix) == dims - 1:
            out.append([*prefix, left])
            return
        for v in range(left + 1):
            rec([*prefix, v], left - v)

    rec([], n)
    return np.asarray(out, dtype=np.float64) / n
