"""ANN fill: nearest items by inner product over L2-normalised item embeddings (faiss)."""

from __future__ import annotations

import faiss
import numpy as np

from services.common.errors import InvalidInputError


class AnnIndex:
    """Exact inner-product search for small catalogs, HNSW above ``hnsw_threshold`` items."""

    def __init__(self, embeddings: np.ndarray, hnsw_threshold: int = 200_000) -> None:
        if embeddings.ndim != 2:
            raise InvalidInputError("item embeddings must be a 2-D array")
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        n, dim = self.embeddings.shape
        self.dim = dim
        index: faiss.Index
        if n >= hnsw_threshold:
            index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = 128
        else:
            index = faiss.IndexFlatIP(dim)
        index.add(self.embeddings)
        self.index = index

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def history_vector(self, rows: np.ndarray) -> np.ndarray | None:
        """Unit mean of the embeddings of ``rows`` (None for an empty history)."""
        if len(rows) == 0:
            return None
        mean = self.embeddings[rows].mean(axis=0)
        norm = float(np.linalg.norm(mean))
        return (mean / norm).astype(np.float32) if norm > 0 else None

    def search(
        self,
        vector: np.ndarray,
        k: int,
        *,
        exclude: set[int] | None = None,
        allowed: np.ndarray | None = None,
    ) -> list[tuple[int, float]]:
        """Top-``k`` (row, similarity) for one unit ``vector``, honouring exclusions/filters."""
        if vector.shape != (self.dim,):
            raise InvalidInputError(
                f"query embedding must have {self.dim} dims, got {vector.shape}"
            )
        exclude = exclude or set()
        params = None
        if allowed is not None:
            if len(allowed) == 0:
                return []
            selector = faiss.IDSelectorBatch(allowed.astype(np.int64))
            params = faiss.SearchParameters()
            params.sel = selector  # ``selector`` stays referenced until the search returns
        want = min(len(self), k + len(exclude))
        scores, rows = self.index.search(
            vector.reshape(1, -1).astype(np.float32), want, params=params
        )
        out: list[tuple[int, float]] = []
        for row, score in zip(rows[0].tolist(), scores[0].tolist(), strict=True):
            if row < 0 or row in exclude:
                continue
            out.append((int(row), float(score)))
            if len(out) == k:
                break
        return out
