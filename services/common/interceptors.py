"""Server interceptors: metrics, domain-error mapping, request context and deadlines.

Order (outermost first): metrics → errors → request context. Metrics thus see
the final status code, and the error mapping sees deadline aborts as already
decided.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from services.common.deadline import Deadline
from services.common.errors import GenSearchError
from services.common.logging import request_id_var
from services.common.metrics import GRPC_HANDLED, GRPC_IN_FLIGHT, GRPC_LATENCY

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
Behaviour = Callable[[Any, aio.ServicerContext], Awaitable[Any]]

deadline_var: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "deadline", default=None
)


def current_deadline(default_seconds: float = 2.0) -> Deadline:
    """The deadline of the call being handled (set by :class:`RequestContextInterceptor`)."""
    deadline = deadline_var.get()
    return deadline if deadline is not None else Deadline.after(default_seconds)


def _split_method(full: str) -> tuple[str, str]:
    # "/gensearch.retrieval.v1.RetrievalService/Retrieve" -> ("RetrievalService", "Retrieve")
    _, _, rest = full.partition("/")
    service, _, method = rest.rpartition("/")
    return service.rsplit(".", 1)[-1], method


class _UnaryInterceptor(aio.ServerInterceptor):
    """Base: wraps the behaviour of unary-unary handlers; passes streams through."""

    def wrap(self, behaviour: Behaviour, method: str) -> Behaviour:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            self.wrap(handler.unary_unary, handler_call_details.method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class MetricsInterceptor(_UnaryInterceptor):
    """Counts calls by final code, times them and tracks in-flight calls."""

    def __init__(self, service: str) -> None:
        self.service = service

    def wrap(self, behaviour: Behaviour, method: str) -> Behaviour:
        _, name = _split_method(method)
        in_flight = GRPC_IN_FLIGHT.labels(self.service, name)
        latency = GRPC_LATENCY.labels(self.service, name)

        async def measured(request: Any, context: aio.ServicerContext) -> Any:
            start = time.perf_counter()
            in_flight.inc()
            code = "UNKNOWN"
            try:
                response = await behaviour(request, context)
                set_code = context.code()
                code = set_code.name if isinstance(set_code, grpc.StatusCode) else "OK"
                return response
            except aio.AbortError:
                set_code = context.code()
                code = set_code.name if isinstance(set_code, grpc.StatusCode) else "UNKNOWN"
                raise
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            finally:
                in_flight.dec()
                latency.observe(time.perf_counter() - start)
                GRPC_HANDLED.labels(self.service, name, code).inc()

        return measured


class ErrorMappingInterceptor(_UnaryInterceptor):
    """Domain errors → their status code and message; anything else → INTERNAL, no traceback."""

    def wrap(self, behaviour: Behaviour, method: str) -> Behaviour:
        async def mapped(request: Any, context: aio.ServicerContext) -> Any:
            try:
                return await behaviour(request, context)
            except GenSearchError as exc:
                log.info("call failed", extra={"method": method, "code": exc.code.name})
                await context.abort(exc.code, str(exc))
            except (aio.AbortError, asyncio.CancelledError):
                raise
            except Exception:
                log.exception("unhandled error", extra={"method": method})
                rid = request_id_var.get()
                await context.abort(
                    grpc.StatusCode.INTERNAL, f"internal error (request id {rid!r})"
                )

        return mapped


class RequestContextInterceptor(_UnaryInterceptor):
    """Sets the request id and deadline context and stops work once the deadline passes.

    A call without a deadline gets ``default_deadline_seconds``. Work awaited by
    the handler is cancelled at the deadline; CPU work in threads must check
    :func:`current_deadline` cooperatively.
    """

    def __init__(self, default_deadline_seconds: float) -> None:
        self.default_deadline_seconds = default_deadline_seconds

    def wrap(self, behaviour: Behaviour, method: str) -> Behaviour:
        async def scoped(request: Any, context: aio.ServicerContext) -> Any:
            metadata = dict(context.invocation_metadata() or ())
            rid = str(metadata.get(REQUEST_ID_KEY, ""))[:64]
            deadline = Deadline.from_remaining(
                context.time_remaining(), self.default_deadline_seconds
            )
            rid_token = request_id_var.set(rid)
            dl_token = deadline_var.set(deadline)
            timeout = asyncio.timeout(max(deadline.remaining(), 0.0))
            try:
                async with timeout:
                    return await behaviour(request, context)
            except TimeoutError:
                if not timeout.expired():
                    raise  # a TimeoutError of the handler's own, not our deadline
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
            finally:
                request_id_var.reset(rid_token)
                deadline_var.reset(dl_token)

        return scoped
