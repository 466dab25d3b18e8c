"""Client channels with a retry policy for idempotent calls, and deadline-carrying calls."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.deadline import Deadline
from services.common.interceptors import REQUEST_ID_KEY
from services.common.logging import request_id_var

R = TypeVar("R")


def retry_service_config(services: Sequence[str], max_attempts: int = 3) -> str:
    """gRPC service config JSON retrying UNAVAILABLE for every method of ``services``.

    Only idempotent services belong here: a retried call may run twice.
    """
    config = {
        "methodConfig": [
            {
                "name": [{"service": name} for name in services],
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": "0.01s",
                    "maxBackoff": "0.1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
    return json.dumps(config)


def create_channel(
    target: str, *, idempotent_services: Sequence[str] = (), max_attempts: int = 3
) -> aio.Channel:
    """An insecure ``grpc.aio`` channel to ``target`` with retries for idempotent services."""
    options: list[tuple[str, Any]] = [
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ]
    if idempotent_services:
        options.append(
            ("grpc.service_config", retry_service_config(idempotent_services, max_attempts))
        )
    return aio.insecure_channel(target, options=options)


async def call_unary(
    method: Callable[..., Awaitable[R]],
    request: Any,
    *,
    deadline: Deadline,
    stage: str,
    request_id: str | None = None,
) -> R:
    """Call a unary stub method with the caller's remaining budget as its timeout.

    Raises :class:`~services.common.errors.DeadlineExceededError` without
    calling when the budget is already spent.
    """
    rid = request_id if request_id is not None else request_id_var.get()
    metadata = ((REQUEST_ID_KEY, rid),) if rid else None
    return await method(request, timeout=deadline.timeout(stage), metadata=metadata)


async def health_status(channel: aio.Channel, service: str = "", wait_seconds: float = 1.0) -> str:
    """The standard health status name of ``service`` (``UNREACHABLE`` when the call fails)."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        response = await stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=wait_seconds
        )
    except grpc.RpcError:
        return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
