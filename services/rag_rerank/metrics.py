"""RAG rerank Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

SCORE_SECONDS = Histogram(
    "gensearch_rag_rerank_score_seconds",
    "Cross-encoder time for one request's documents.",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5),
)
DOCUMENTS = Histogram(
    "gensearch_rag_rerank_documents",
    "Documents scored per request (after item ids are resolved to passages).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200),
)
SELECTED = Histogram(
    "gensearch_rag_rerank_selected",
    "Documents selected per request (0: no document helps).",
    buckets=(0, 1, 2, 3, 5, 10),
)
TRUNCATED = Counter(
    "gensearch_rag_rerank_truncated_total",
    "Documents cut to the model's maximum length.",
)
