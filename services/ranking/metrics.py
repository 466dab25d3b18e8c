"""Ranking Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from services.ranking.fusion import OBJECTIVES

STAGE_SECONDS = Histogram(
    "gensearch_ranking_stage_seconds",
    "Time of one ranking stage for one request.",
    ["stage"],
    buckets=(0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.004, 0.007, 0.01, 0.02, 0.05),
)
CANDIDATES = Histogram(
    "gensearch_ranking_candidates",
    "Candidates scored per request.",
    buckets=(1, 10, 20, 50, 100, 200, 500),
)
WEIGHT = Histogram(
    "gensearch_ranking_fusion_weight",
    "Served GRADE objective weights (one observation per objective per request).",
    ["objective"],
    buckets=(0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
EXPLORED = Counter(
    "gensearch_ranking_explored_total", "Requests served with an explored (sampled) weight vector."
)
FEATURE_ERRORS = Counter(
    "gensearch_ranking_feature_errors_total",
    "Feature reads that failed (served with cold defaults), by cause.",
    ["cause"],
)
COLD = Counter(
    "gensearch_ranking_cold_total",
    "Users or items without stored features (served with defaults), by kind.",
    ["kind"],
)
# pre-create the labelled series so dashboards see zeros, not gaps
for _o in OBJECTIVES:
    WEIGHT.labels(_o)
for _k in ("user", "item"):
    COLD.labels(_k)
