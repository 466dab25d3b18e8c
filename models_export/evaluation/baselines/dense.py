"""Dense retrieval: MiniLM query embedding against the item embeddings (faiss inner product).

``dense`` uses the query only; ``dense+history`` adds ``history_weight`` x the cosine to the
user's mean history embedding, so it is the dense baseline that can use history.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import faiss
import numpy as np

from models_export.evaluation.baselines.history_mean import history_vectors
from models_export.evaluation.protocol import SEARCH, SEARCH_HISTORY, EvalQuery, top_k_rows

TextEncoder = Callable[[Sequence[str]], np.ndarray]  # texts -> float32 (n, d), L2-normalised


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


class DenseRetriever:
    """Cosine search over L2-normalised item embeddings with a flat inner-product index."""

    name = "dense"
    modes = frozenset({SEARCH})

    def __init__(
        self, item_embeddings: np.ndarray, encode: TextEncoder, tie_key: np.ndarray | None = None
    ) -> None:
        n = item_embeddings.shape[0]
        self.tie_key = np.arange(n) if tie_key is None else np.asarray(tie_key)
        self.items = np.ascontiguousarray(_normalise(item_embeddings))
        self.index = faiss.IndexFlatIP(self.items.shape[1])
        self.index.add(self.items)
        self.encode = encode
        self._cache: dict[str, np.ndarray] = {}

    def query_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts``, encoding each distinct text once."""
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            for t, v in zip(missing, _normalise(self.encode(missing)), strict=True):
                self._cache[t] = v
        return np.stack([self._cache[t] for t in texts]) if texts else self.items[:0]

    def retrieve(self, queries: Sequence[EvalQuery], k: int) -> list[list[int]]:
        vecs = self.query_vectors([q.query or "" for q in queries])
        k = min(k, self.index.ntotal)
        scores, rows = self.index.search(vecs, k)
        out = []
        for s, r in zip(scores, rows, strict=True):
            # faiss does not promise an order among equal scores; apply the tie key.
            order = np.lexsort((self.tie_key[r], -s))
            out.append(r[order].tolist())
        return out


class DenseHistoryRetriever:
    """score = cos(query, item) + history_weight * cos(mean history, item)."""

    name = "dense+history"
    modes = frozenset({SEARCH_HISTORY})

    def __init__(
        self, dense: DenseRetriever, history_weight: float = 0.5, last_n: int | None = None
    ) -> None:
        self.dense = dense
        self.history_weight = history_weight
        self.last_n = last_n

    def retrieve(self, queries: Sequence[EvalQuery], k: int) -> list[list[int]]:
        qv = self.dense.query_vectors([q.query or "" for q in queries])
        hv = history_vectors(self.dense.items, [q.history for q in queries], self.last_n)
        scores = (qv + self.history_weight * hv) @ self.dense.items.T
        return top_k_rows(scores, k, self.dense.tie_key)
