"""gRPC downstreams of the gateway, each behind a circuit breaker."""

from __future__ import annotations

from typing import Any

import grpc

from services.common.deadline import Deadline
from services.common.errors import DeadlineExceededError
from services.common.grpc_client import call_unary, create_channel, health_status
from services.gateway.breaker import CircuitBreaker
from services.gateway.metrics import BREAKER_OPEN


class StageFailedError(Exception):
    """A downstream stage did not answer; ``reason`` is safe to show to clients.

    ``invalid``: the stage refused the request itself (INVALID_ARGUMENT); ``not_found``: it
    names something the stage does not have (NOT_FOUND); ``reason`` is then the stage's own
    message (domain errors carry messages meant for callers)."""

    def __init__(
        self,
        stage: str,
        reason: str,
        *,
        timeout: bool = False,
        invalid: bool = False,
        not_found: bool = False,
    ) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason
        self.timeout = timeout
        self.invalid = invalid
        self.not_found = not_found


class Downstream:
    """One gRPC service: channel, stub and breaker."""

    def __init__(
        self, stage: str, addr: str, service_name: str, stub_cls: Any, breaker: CircuitBreaker
    ) -> None:
        self.stage = stage
        self.addr = addr
        self.service_name = service_name
        self.channel = create_channel(addr, idempotent_services=[service_name])
        self.stub = stub_cls(self.channel)
        self.breaker = breaker
        self._open_gauge = BREAKER_OPEN.labels(stage)  # bound once: labels() locks per call

    async def call(self, method: str, request: Any, deadline: Deadline) -> Any:
        """Call ``method`` within ``deadline``; raise :class:`StageFailedError` on any failure."""
        if not self.breaker.allow():
            self._open_gauge.set(1)
            raise StageFailedError(self.stage, "circuit open after repeated failures")
        try:
            reply = await call_unary(
                getattr(self.stub, method), request, deadline=deadline, stage=self.stage
            )
        except DeadlineExceededError as exc:
            raise StageFailedError(self.stage, "no time budget left", timeout=True) from exc
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            caller = (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.FAILED_PRECONDITION,
            )
            if code in caller:
                self.breaker.success()  # the service answered; the request was the problem
            else:
                self.breaker.failure()
            self._open_gauge.set(int(self.breaker.state == "open"))
            if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
                detail = exc.details() if hasattr(exc, "details") else None
                reason = detail or code.name.lower()
                invalid = code == grpc.StatusCode.INVALID_ARGUMENT
                raise StageFailedError(
                    self.stage, reason, invalid=invalid, not_found=not invalid
                ) from exc
            timeout = code == grpc.StatusCode.DEADLINE_EXCEEDED
            raise StageFailedError(self.stage, code.name.lower(), timeout=timeout) from exc
        self.breaker.success()
        self._open_gauge.set(0)
        return reply

    async def health(self) -> str:
        return await health_status(self.channel, self.service_name, wait_seconds=0.5)

    async def close(self) -> None:
        await self.channel.close()
