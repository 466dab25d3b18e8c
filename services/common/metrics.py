"""Prometheus metrics shared by every gRPC service, and the /metrics endpoint."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# Buckets fitted to our latencies: sub-millisecond cache hits to ~2 s worst cases.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
    2.0,
)

GRPC_HANDLED = Counter(
    "gensearch_grpc_server_handled_total",
    "gRPC calls completed, by final status code.",
    ["service", "method", "code"],
)
GRPC_LATENCY = Histogram(
    "gensearch_grpc_server_handling_seconds",
    "Time from receiving a gRPC call to its final status.",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)
GRPC_IN_FLIGHT = Gauge(
    "gensearch_grpc_server_in_flight",
    "gRPC calls currently being handled.",
    ["service", "method"],
)
SERVICE_READY = Gauge(
    "gensearch_service_ready",
    "1 once models are loaded and warmed and health is SERVING, else 0.",
    ["service"],
)

ONNX_SESSION_INFO = Gauge(
    "gensearch_onnx_session_info",
    "1 for each ONNX Runtime session this process opened, labelled by the execution "
    "provider it runs on (the session's first provider).",
    ["model", "provider"],
)


def start_metrics_server(port: int, host: str = "127.0.0.1") -> int:
    """Serve the default registry in Prometheus text format on ``host:port``; return the port."""
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)
