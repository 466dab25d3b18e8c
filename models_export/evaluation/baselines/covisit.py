"""Item-to-item co-visitation ("bought A, then bought B"), counted from TRAINING histories.

The counting lives in ``services.retrieval.covisit`` (the retrieval service fuses the same
table into decoding); this is the harness baseline that ranks by it alone.

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

from models_export.evaluation.protocol import RECOMMENDATION, EvalQuery, top_k_rows
from services.retrieval.covisit import CovisitTable, covisit_matrix

__all__ = ["CovisitRetriever", "covisit_matrix"]

# Popularity only orders the items that no history item leads to: every co-visit score is
# at least 1 / (longest history), far above this scale.
_BACKOFF_SCALE = 1e-6


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
        self.table = CovisitTable.from_histories(train_histories, num_items, window)
        counts = self.table.popularity
        self.backoff = _BACKOFF_SCALE * counts / max(float(counts.max(initial=0.0)), 1.0)
        self.decay = decay
        self.last_n = last_n
        self.tie_key = tie_key
        self.num_items = num_items

    def scores(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """(B, N) co-visit score of every item for each history (plus the popularity back-off)."""
        out = self.table.scores(histories, self.decay, self.last_n)
        return out + self.backoff[None, :]

    def retrieve(self, queries: Sequence[EvalQuery], k: int) -> list[list[int]]:
        return top_k_rows(self.scores([q.history for q in queries]), k, self.tie_key)
