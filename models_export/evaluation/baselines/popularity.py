"""Most-popular items, counted from the TRAINING histories only."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models_export.evaluation.protocol import RECOMMENDATION, EvalQuery, top_k_rows
from services.retrieval.covisit import item_counts


class PopularityRetriever:
    """The same list for everyone: items by training-interaction count (ties by ``tie_key``)."""

    name = "popularity"
    modes = frozenset({RECOMMENDATION})

    def __init__(
        self,
        train_histories: Sequence[np.ndarray],
        num_items: int,
        tie_key: np.ndarray | None = None,
    ) -> None:
        counts = item_counts(train_histories, num_items)
        self.counts = counts
        self._ranking = top_k_rows(counts[None, :], num_items, tie_key)[0]

    def retrieve(self, queries: Sequence[EvalQuery], k: int) -> list[list[int]]:
        top = self._ranking[:k]
        return [list(top) for _ in queries]
