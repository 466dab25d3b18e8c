"""Item-to-item co-visitation ("bought A, then bought B"), counted from TRAINING histories.

The classic production candidate generator (item-based collaborative filtering: Linden,
Smith & York, IEEE Internet Computing 2003; the session co-visitation matrices of
e-commerce recommenders). For every training history and every ordered pair of positions
i < j, item j gains ``1 / (j - i)`` in the row of item i: "bought later, and soon after".
A request's score is the sum of the rows of its last ``last_n`` history items, the most
recent weighted 1, the one before ``decay``, then ``decay**2``, and so on. Items no history
item leads to are ordered by training popularity (a back-off far below any co-visit score).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from models_export.evaluation.protocol import RECOMMENDATION, EvalQuery, top_k_rows

# Popularity only orders the items that no history item leads to: every co-visit score is
# at least 1 / (longest history), far above this scale.
_BACKOFF_SCALE = 1e-6


def covisit_matrix(
    train_histories: Sequence[np.ndarray], num_items: int, window: int | None = None
) -> sp.csr_matrix:
    """(N, N) forward co-visitation counts: row a, column b += 1/(j - i) for a at i, b at j > i
    (pairs further apart than ``window`` positions are skipped when it is given)."""
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for hist in train_histories:
        h = np.asarray(hist, dtype=np.int64)
        n = len(h)
        if n < 2:
            continue
        i, j = np.triu_indices(n, k=1)
        gap = j - i
        if window is not None:
            keep = gap <= window
            i, j, gap = i[keep], j[keep], gap[keep]
        rows.append(h[i])
        cols.append(h[j])
        vals.append(1.0 / gap)
    if not rows:
        return sp.csr_matrix((num_items, num_items), dtype=np.float64)
    m = sp.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(num_items, num_items),
        dtype=np.float64,
    )
    return m.tocsr()  # duplicate (a, b) entries are summed


class CovisitRetriever:
    """Recommendation from the co-visitation rows of the user's most recent items."""

    name = "covisit"
    modes = frozenset({RECOMMENDATION})

    def __init__(
        self,
        train_histories: Sequence[np.ndarray],
        num_items: int,
        decay: float = 0.7,
        last_n: int = 20,
        window: int | None = None,
        tie_key: np.ndarray | None = None,
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        if last_n < 1:
            raise ValueError(f"last_n must be >= 1, got {last_n}")
        self.matrix = covisit_matrix(train_histories, num_items, window)
        counts = np.zeros(num_items, dtype=np.float64)
        for hist in train_histories:
            np.add.at(counts, np.asarray(hist, dtype=np.int64), 1.0)
        self.backoff = _BACKOFF_SCALE * counts / max(float(counts.max(initial=0.0)), 1.0)
        self.decay = decay
        self.last_n = last_n
        self.tie_key = tie_key
        self.num_items = num_items

    def scores(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """(B, N) co-visit score of every item for each history (plus the popularity back-off)."""
        weights = sp.lil_matrix((len(histories), self.num_items), dtype=np.float64)
        for b, hist in enumerate(histories):
            recent = list(hist)[-self.last_n :][::-1]  # most recent first
            for age, item in enumerate(recent):
                weights[b, item] += self.decay**age
        out = (weights.tocsr() @ self.matrix).toarray()
        return out + self.backoff[None, :]

    def retrieve(self, queries: Sequence[EvalQuery], k: int) -> list[list[int]]:
        return top_k_rows(self.scores([q.history for q in queries]), k, self.tie_key)
