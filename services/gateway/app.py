"""The FastAPI application: routes, access control, readiness and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import hmac
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated

import orjson
from fastapi import Depends, FastAPI, Request, Response
from fastapi import Path as FastApiPath
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.artifacts import ArtifactRepository
from services.common.generated.gensearch.query_understanding.v1 import (
    query_understanding_pb2_grpc,
)
from services.common.generated.gensearch.rag_rerank.v1 import rag_rerank_pb2_grpc
from services.common.generated.gensearch.ranking.v1 import ranking_pb2_grpc
from services.common.generated.gensearch.retrieval.v1 import retrieval_pb2_grpc
from services.common.logging import request_id_var
from services.gateway.breaker import CircuitBreaker
from services.gateway.config import GatewaySettings
from services.gateway.downstream import Downstream, StageFailedError
from services.gateway.errors import ApiError
from services.gateway.fast_search import FastSearchMiddleware
from services.gateway.materialize import materialize
from services.gateway.metrics import RATE_LIMITED, http_latency, http_requests
from services.gateway.rag import RagService, RagUnavailableError
from services.gateway.schemas import (
    ID_PATTERN,
    ErrorResponse,
    ItemResponse,
    RagContextRequest,
    RagContextResponse,
    RagRerankRequest,
    RagRerankResponse,
    SearchRequest,
    SearchResponse,
)
from services.gateway.search import SearchRejectedError, SearchService, SearchUnavailableError
from services.gateway.store import FeatureStore, InMemoryStore, RedisStore

log = logging.getLogger(__name__)
_RID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


class ObserveMiddleware:
    """Request id (``X-Request-ID`` in and out), request count and latency per route.

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` (``@app.middleware``)
    runs every request through an extra task and memory streams, which cost more
    than the rest of the gateway's own work on a search.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value.decode("latin-1")
                break
        rid = given if _RID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            http_requests(path, str(status)).inc()
            http_latency(path).observe(time.perf_counter() - start)


@dataclass(slots=True)
class Readiness:
    ready: bool = False
    reason: str = "starting"
    # once true, searches are answered whatever the readiness (a stage that is down
    # degrades them, or answers 503 for what cannot be served); before, 503 "starting"
    served_once: bool = False
    # health of each configured optional stage; not needed for readiness (a search
    # degrades without them), shown so that operators and the local stack can see them
    stages: dict[str, str] = field(default_factory=dict)


def _downstream(
    settings: GatewaySettings, stage: str, addr: str, service: str, stub: type
) -> Downstream | None:
    if not addr:
        return None
    breaker = CircuitBreaker(stage, settings.breaker_failures, settings.breaker_reset_seconds)
    return Downstream(stage, addr, service, stub, breaker)


def _store(settings: GatewaySettings) -> FeatureStore:
    if not settings.redis_url:
        return InMemoryStore()
    return RedisStore(
        settings.redis_url,
        prefix=settings.redis_key_prefix,
        socket_timeout=settings.redis_socket_timeout,
        connect_timeout=settings.redis_connect_timeout,
        max_connections=settings.redis_max_connections,
        breaker=CircuitBreaker("redis", settings.breaker_failures, settings.breaker_reset_seconds),
    )


@dataclass(slots=True)
class _Components:
    """Built inside the server's event loop (grpc.aio channels are bound to their loop)."""

    store: FeatureStore
    retrieval: Downstream
    service: SearchService
    rag: RagService

    def downstreams(self) -> list[Downstream]:
        optional = (self.service.qu, self.service.ranking, self.rag.rerank_stage)
        return [self.retrieval, *(d for d in optional if d is not None)]


def _build(settings: GatewaySettings) -> _Components:
    store = _store(settings)
    retrieval = _downstream(
        settings,
        "retrieval",
        settings.retrieval_addr,
        "gensearch.retrieval.v1.RetrievalService",
        retrieval_pb2_grpc.RetrievalServiceStub,
    )
    assert retrieval is not None
    service = SearchService(
        settings,
        store,
        retrieval,
        _downstream(
            settings,
            "query_understanding",
            settings.query_understanding_addr,
            "gensearch.query_understanding.v1.QueryUnderstandingService",
            query_understanding_pb2_grpc.QueryUnderstandingServiceStub,
        ),
        _downstream(
            settings,
            "ranking",
            settings.ranking_addr,
            "gensearch.ranking.v1.RankingService",
            ranking_pb2_grpc.RankingServiceStub,
        ),
    )
    rag = RagService(
        settings,
        service,
        _downstream(
            settings,
            "rag_rerank",
            settings.rag_rerank_addr,
            "gensearch.rag_rerank.v1.RagRerankService",
            rag_rerank_pb2_grpc.RagRerankServiceStub,
        ),
    )
    return _Components(store, retrieval, service, rag)


def create_app(settings: GatewaySettings) -> ASGIApp:
    """Build the gateway's ASGI app (the FastAPI app inside the request-id/metrics and
    search fast-path middleware); stores and channels are created in the lifespan."""
    readiness = Readiness()
    key_hashes = [h.lower() for h in settings.api_key_sha256]
    holder: dict[str, _Components] = {}

    def parts() -> _Components:
        found = holder.get("c")
        if found is None:
            raise ApiError(503, "not ready: starting", {"Retry-After": "1"})
        return found

    async def check_ready() -> None:
        c = parts()
        store, retrieval, service = c.store, c.retrieval, c.service
        status = await retrieval.health()
        if status != "SERVING":
            readiness.ready, readiness.reason = False, f"retrieval is {status}"
            return
        if not await store.ping():
            # Every gateway shares the store: taking them all out of rotation would turn
            # a cache outage into a search outage. Once serving, stay ready (answers are
            # served with misses); before the first materialisation there is nothing yet.
            readiness.ready = readiness.served_once
            readiness.reason = (
                f"serving {service.version} without the {store.kind} store (unreachable: "
                "every feature lookup is a miss)"
                if readiness.served_once
                else f"{store.kind} store unreachable"
            )
            return
        version = service.version
        try:
            version = await service.refresh_version()
        except StageFailedError as exc:
            readiness.ready, readiness.reason = False, f"retrieval GetInfo failed: {exc.reason}"
            return
        if await store.popular(version) is None:
            readiness.reason = f"materializing features of {version} into the {store.kind} store"
            artifacts = ArtifactRepository(settings.artifact_dir).open(version)
            try:
                counts = await materialize(store, artifacts)
            except (RedisError, OSError, TimeoutError) as exc:  # the store failed midway
                readiness.ready = readiness.served_once
                readiness.reason = f"materializing {version} failed ({exc}); retrying"
                return
            log.info("materialized", extra={"version": version, **counts})
            # The in-process store's features live as long as the process: keep the
            # cyclic garbage collector from scanning them again on every full collection.
            gc.freeze()
        readiness.stages = {d.stage: await d.health() for d in c.downstreams()[1:]}
        readiness.ready, readiness.reason = True, f"serving {version}"
        readiness.served_once = True

    async def watch_readiness() -> None:
        while True:
            try:
                await check_ready()
            except Exception as exc:  # keep watching; the reason tells the operator
                readiness.ready, readiness.reason = False, f"readiness check failed: {exc}"
                log.exception("readiness check failed")
            await asyncio.sleep(0.5 if not readiness.ready else 2.0)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        c = holder["c"] = _build(settings)
        task = asyncio.create_task(watch_readiness())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for downstream in c.downstreams():
            await downstream.close()
        await c.store.close()

    app = FastAPI(
        title="gensearch gateway",
        version="1",
        description="Generative search: constrained generative retrieval, "
        "personalised ranking, RAG document selection.",
        lifespan=lifespan,
        # No OpenTelemetry here (Prometheus metrics instead): off, FastAPI would look up
        # the global OTel providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        responses={
            401: {"model": ErrorResponse},
            429: {"model": ErrorResponse},
            503: {"model": ErrorResponse},
            504: {"model": ErrorResponse},
        },
    )

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    async def authorize(headers: Mapping[str, str]) -> None:
        """API key check and per-key rate limit; raises :class:`ApiError` (401 / 429)."""
        key = headers.get("x-api-key", "")
        digest = hashlib.sha256(key.encode()).hexdigest()
        # Compare against every configured hash so timing reveals nothing.
        matched = False
        for expected in key_hashes:
            matched |= hmac.compare_digest(digest, expected)
        if not key or not matched:
            raise ApiError(401, "missing or invalid API key (header X-API-Key)")
        if settings.rate_limit_per_second > 0:
            allowed, retry_after = await parts().store.take_token(
                digest[:16], settings.rate_limit_per_second, settings.rate_limit_burst
            )
            if not allowed:
                RATE_LIMITED.inc()
                raise ApiError(
                    429,
                    "rate limit exceeded",
                    {"Retry-After": str(max(1, int(retry_after + 0.999)))},
                )

    async def access_control(request: Request) -> None:
        await authorize(request.headers)

    # Without configured keys there is nothing to check: no per-request dependency at all.
    guarded = [Depends(access_control)] if key_hashes else []

    async def answer_search(body: SearchRequest, request_id: str) -> Response:
        if not readiness.served_once:
            raise ApiError(503, f"not ready: {readiness.reason}", {"Retry-After": "1"})
        try:
            answer = await parts().service.search(body, request_id)
        except SearchUnavailableError as exc:
            raise ApiError(exc.status, exc.reason, {"Retry-After": "1"}) from exc
        except SearchRejectedError as exc:
            raise ApiError(exc.status, exc.reason) from exc
        # Serialised once, by orjson: the answer is built from validated input and typed
        # protobufs; FastAPI's response_model path would validate it a second time.
        return Response(orjson.dumps(answer), media_type="application/json")

    @app.post(
        "/v1/search",
        response_model=SearchResponse,
        response_model_exclude_none=True,
        dependencies=guarded,
        # 400: retrieval refused the request as asked, e.g. a query to a log-only catalog
        responses={400: {"model": ErrorResponse}},
        summary="Search (or a recommendation feed when the query is empty)",
    )
    async def search(body: SearchRequest, request: Request) -> Response:
        # Reached for requests the fast path hands over (not JSON, or invalid: FastAPI
        # answers those with its 422) and when called without the middleware stack.
        return await answer_search(body, request.state.request_id)

    @app.get(
        "/v1/items/{item_id}",
        response_model=ItemResponse,
        response_model_exclude_none=True,
        dependencies=guarded,
        responses={404: {"model": ErrorResponse}},
        summary="One catalog item",
    )
    async def get_item(
        item_id: Annotated[str, FastApiPath(pattern=ID_PATTERN, description="Catalog item id")],
    ) -> ItemResponse:
        if not readiness.served_once:
            raise ApiError(503, f"not ready: {readiness.reason}", {"Retry-After": "1"})
        c = parts()
        version = c.service.version
        found = (await c.store.items(version, [item_id])).get(item_id)
        if found is None:
            raise ApiError(404, f"item {item_id!r} not found in version {version}")
        return ItemResponse(
            id=item_id,
            title=found.get("title"),
            brand=found.get("brand") or None,
            category=found.get("category"),
            artifact_version=version,
        )

    async def answer_rag(body: RagRerankRequest | RagContextRequest, rid: str) -> Response:
        if not readiness.served_once:
            raise ApiError(503, f"not ready: {readiness.reason}", {"Retry-After": "1"})
        rag = parts().rag
        try:
            if isinstance(body, RagRerankRequest):
                answer = await rag.rerank(body, rid)
            else:
                answer = await rag.context(body, rid)
        except RagUnavailableError as exc:
            headers = {"Retry-After": "1"} if exc.status >= 500 else None
            raise ApiError(exc.status, exc.reason, headers) from exc
        except SearchUnavailableError as exc:
            raise ApiError(exc.status, exc.reason, {"Retry-After": "1"}) from exc
        except SearchRejectedError as exc:
            raise ApiError(exc.status, exc.reason) from exc
        return Response(orjson.dumps(answer), media_type="application/json")

    @app.post(
        "/v1/rag/rerank",
        response_model=RagRerankResponse,
        response_model_exclude_none=True,
        dependencies=guarded,
        # 400: the reranker refused the request as asked; 404: an unknown item id
        responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
        summary="Score documents for a question; select those worth giving an LLM (or none)",
    )
    async def rag_rerank(body: RagRerankRequest, request: Request) -> Response:
        return await answer_rag(body, request.state.request_id)

    @app.post(
        "/v1/rag/context",
        response_model=RagContextResponse,
        response_model_exclude_none=True,
        dependencies=guarded,
        responses={400: {"model": ErrorResponse}},
        summary="Search, then the top items' passages worth giving an LLM (possibly none)",
    )
    async def rag_context(body: RagContextRequest, request: Request) -> Response:
        return await answer_rag(body, request.state.request_id)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness", responses={503: {"model": ErrorResponse}})
    async def readyz() -> JSONResponse:
        version = holder["c"].service.version if "c" in holder else ""
        body = {
            "ready": readiness.ready,
            "reason": readiness.reason,
            "version": version,
            "optional_stages": readiness.stages,
        }
        return JSONResponse(body, status_code=200 if readiness.ready else 503)

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # Request id and metrics around everything, then the search fast path, then FastAPI:
    # wrapped outside the FastAPI app so that a search skips its per-request machinery.
    route = next(r for r in app.routes if getattr(r, "path", "") == "/v1/search")
    fast = FastSearchMiddleware(
        app, answer=answer_search, authorize=authorize if key_hashes else None, route=route
    )
    return ObserveMiddleware(fast)
