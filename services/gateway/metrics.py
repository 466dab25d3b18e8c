"""Gateway metrics (Prometheus, ``gensearch_gateway_`` prefix, low-cardinality labels)."""

from __future__ import annotations

from functools import cache
from typing import Any

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


# Bound children, looked up once per label set: ``labels()`` takes a lock and builds a
# key on every call, a measurable share of the gateway's own per-request work.
@cache
def stage_latency(stage: str) -> Any:
    """The ``STAGE_LATENCY`` child of ``stage``."""
    return STAGE_LATENCY.labels(stage)


@cache
def cache_lookups(cache_name: str, outcome: str) -> Any:
    """The ``CACHE`` child of (cache, outcome)."""
    return CACHE.labels(cache_name, outcome)


@cache
def http_requests(route: str, status: str) -> Any:
    """The ``HTTP_REQUESTS`` child of (route template, status): bounded label values."""
    return HTTP_REQUESTS.labels(route, status)


@cache
def http_latency(route: str) -> Any:
    """The ``HTTP_LATENCY`` child of a route template."""
    return HTTP_LATENCY.labels(route)
