"""Gateway metrics (Prometheus, ``gensearch_gateway_`` prefix, low-cardinality labels)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS

HTTP_REQUESTS = Counter(
    "gensearch_gateway_http_requests_total",
    "HTTP requests by route and status.",
    ["route", "status"],
)
HTTP_LATENCY = Histogram(
    "gensearch_gateway_http_request_seconds",
    "HTTP request latency.",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
STAGE_LATENCY = Histogram(
    "gensearch_gateway_stage_seconds",
    "Latency of one search stage.",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
DEGRADED = Counter(
    "gensearch_gateway_degraded_total", "Searches answered with a degraded stage.", ["stage"]
)
CACHE = Counter(
    "gensearch_gateway_cache_total", "Cache lookups by cache and outcome.", ["cache", "outcome"]
)
STORE_ERRORS = Counter(
    "gensearch_gateway_store_errors_total",
    "Feature-store (Redis) operations that failed and were treated as misses.",
    ["op"],
)
BREAKER_OPEN = Gauge(
    "gensearch_gateway_breaker_open", "1 while a downstream's circuit breaker is open.", ["stage"]
)
RATE_LIMITED = Counter("gensearch_gateway_rate_limited_total", "Requests refused with 429.")
