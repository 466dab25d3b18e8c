"""ANN fill: nearest items by inner product over L2-normalised item embeddings (faiss)."""

from __future__ import annotations

import logging

import faiss
import numpy as np

from services.common.errors import InvalidInputError

log = logging.getLogger(__name__)

#: faiss's GPU k-selection handles at most this many neighbours per query
GPU_MAX_K = 2048


class AnnIndex:
    """Exact inner-product search for small catalogs, HNSW above ``hnsw_threshold`` items.

    ``use_gpu``: copy the exact index to GPU ``gpu_device`` (``faiss.index_cpu_to_gpu``)
    when faiss was built with GPU support and reports a GPU; otherwise, and for HNSW (which
    faiss does not run on GPUs), it stays on the CPU and the reason is logged. Searches the
    GPU index cannot serve (an allowed-rows filter, more than :data:`GPU_MAX_K` results)
    use the CPU copy, which is always kept."""

    def __init__(
        self,
        embeddings: np.ndarray,
        hnsw_threshold: int = 200_000,
        *,
        use_gpu: bool = False,
        gpu_device: int = 0,
    ) -> None:
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
        self.gpu_index: faiss.Index | None = None
        self.device = "cpu"
        if use_gpu:
            self._to_gpu(gpu_device, hnsw=n >= hnsw_threshold)

    def _to_gpu(self, device: int, hnsw: bool) -> None:
        """Move a copy of the index to GPU ``device`` when possible; log why not otherwise."""
        reason = ""
        gpus = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
        if not hasattr(faiss, "StandardGpuResources"):
            reason = "this faiss has no GPU support (faiss-cpu; install faiss-gpu-cu12)"
        elif gpus <= device:
            reason = f"faiss reports {gpus} GPU(s), device {device} asked for"
        elif hnsw:
            reason = "HNSW indexes do not run on faiss GPUs"
        if reason:
            log.warning("ANN index stays on the CPU", extra={"reason": reason})
            return
        self._resources = faiss.StandardGpuResources()  # must outlive the GPU index
        self.gpu_index = faiss.index_cpu_to_gpu(self._resources, device, self.index)
        self.device = f"gpu:{device}"
        log.info("ANN index on the GPU", extra={"device": device, "items": len(self)})

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
        index: faiss.Index = self.index
        if self.gpu_index is not None and params is None and want <= GPU_MAX_K:
            index = self.gpu_index
        scores, rows = index.search(vector.reshape(1, -1).astype(np.float32), want, params=params)
        out: list[tuple[int, float]] = []
        for row, score in zip(rows[0].tolist(), scores[0].tolist(), strict=True):
            if row < 0 or row in exclude:
                continue
            out.append((int(row), float(score)))
            if len(out) == k:
                break
        return out
