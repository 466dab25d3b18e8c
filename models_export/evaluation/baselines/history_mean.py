"""Recommendation by the mean MiniLM embedding of the user's history (cosine to every item)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models_export.evaluation.protocol import RECOMMENDATION, EvalQuery, top_k_rows


def history_vectors(
    item_embeddings: np.ndarray, histories: Sequence[Sequence[int]], last_n: int | None = None
) -> np.ndarray:
    """L2-normalised mean embedding of each history's last ``last_n`` items (zeros if empty)."""
    out = np.zeros((len(histories), item_embeddings.shape[1]), dtype=np.float32)
    for i, hist in enumerate(histories):
        rows = list(hist)[-last_n:] if last_n else list(hist)
        if rows:
            v = item_embeddings[np.asarray(rows, dtype=np.int64)].mean(axis=0)
            out[i] = v / max(float(np.linalg.norm(v)), 1e-12)
    return out


class HistoryMeanRetriever:
    """Items nearest to the mean of the history embeddings (of the last ``last_n`` items only
    when given; that variant is reported as ``recent-mean``)."""

    modes = frozenset({RECOMMENDATION})

    def __init__(
        self,
        item_embeddings: np.ndarray,
        last_n: int | None = None,
        tie_key: np.ndarray | None = None,
        name: str = "history-mean",
    ) -> None:
        self.name = name
        self.tie_key = tie_key
        norms = np.linalg.norm(item_embeddings, axis=1, keepdims=True)
        self.items = (item_embeddings / np.maximum(norms, 1e-12)).astype(np.float32)
        self.last_n = last_n

    def retrieve(self, queries: Sequence[EvalQuery], k: int) -> list[list[int]]:
        hv = history_vectors(self.items, [q.history for q in queries], self.last_n)
        return top_k_rows(hv @ self.items.T, k, self.tie_key)
