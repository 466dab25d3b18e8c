"""Query-understanding Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

STAGE_SECONDS = Histogram(
    "gensearch_qu_stage_seconds",
    "Time of one query-understanding stage for one call (a batch counts once).",
    ["stage"],
    buckets=(0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.004, 0.007, 0.01, 0.02),
)
CORRECTED = Counter(
    "gensearch_qu_corrected_total", "Queries whose spelling was corrected (at least one word)."
)
REJECTED = Counter(
    "gensearch_qu_rejected_total", "Queries refused as invalid input, by reason.", ["reason"]
)
