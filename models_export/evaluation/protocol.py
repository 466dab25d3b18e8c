"""The contract between the harness and every retrieval method.

A method only sees :class:`EvalQuery` (query text and/or history); the harness keeps the
target in :class:`EvalCase` so no method can peek at it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True, slots=True)
class EvalQuery:
    """One request: ``query`` (None in recommendation mode) and history item rows, oldest first.

    ``exclude``: item rows the caller does not want back (the harness sets it to the history
    under ``exclude_history``). A method may leave them out inside its own search, as the
    generator's constrained decoding does; the harness filters every method's list anyway.
    """

    user_id: str
    query: str | None
    history: tuple[int, ...]
    exclude: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class EvalCase:
    """A request and the single relevant item (its row in items.parquet)."""

    request: EvalQuery
    target: int


SEARCH = "search"  # derived query, no history
SEARCH_HISTORY = "search+history"  # derived query + the user's history
RECOMMENDATION = "recommendation"  # history only, query is None
MODES: tuple[str, ...] = (SEARCH, SEARCH_HISTORY, RECOMMENDATION)


@runtime_checkable
class Retriever(Protocol):
    """A retrieval method under evaluation.

    ``modes`` lists the modes whose inputs the method actually uses; the harness evaluates it
    only there and reports n/a elsewhere (a method that ignores history is not re-run in
    ``search+history`` under another name).
    """

    name: str
    modes: frozenset[str]

    def retrieve(self, queries: Sequence[EvalQuery], k: int) -> list[list[int]]:
        """Top-``k`` item rows per query, best first."""
        ...


def tie_break_key(num_items: int, seed: int = 0) -> np.ndarray:
    """A fixed random priority per item, used to order equal scores.

    Item rows follow first appearance in the behaviour log, so "lower row first" would quietly
    favour popular items; a seeded permutation keeps ties neutral and reproducible.
    """
    return np.random.default_rng(seed).permutation(num_items).astype(np.int64)


def top_k_rows(scores: np.ndarray, k: int, tie_key: np.ndarray | None = None) -> list[list[int]]:
    """Top-``k`` columns of each row of ``scores`` (B, N), best first.

    Equal scores are ordered by ``tie_key`` (lower first; default: the item row), so results
    are deterministic. NaN scores rank last.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (batch, items), got shape {scores.shape}")
    n = scores.shape[1]
    key = np.arange(n) if tie_key is None else np.asarray(tie_key)
    if key.shape != (n,):
        raise ValueError(f"tie_key has shape {key.shape}, expected ({n},)")
    k = min(k, n)
    if k <= 0:
        return [[] for _ in range(scores.shape[0])]
    neg = -np.nan_to_num(scores.astype(np.float64, copy=False), nan=-np.inf)
    out: list[list[int]] = []
    for row in neg:
        if k < n:
            # Everything at least as good as the k-th best value; ties there are cut by key.
            threshold = np.partition(row, k - 1)[k - 1]
            cand = np.flatnonzero(row <= threshold)
        else:
            cand = np.arange(n)
        order = cand[np.lexsort((key[cand], row[cand]))][:k]
        out.append(order.tolist())
    return out
