"""The query-understanding gRPC servicer: messages in, the engine does the work."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from grpc import aio

from services.common.errors import InvalidInputError, NotReadyError
from services.common.generated.gensearch.common.v1 import common_pb2
from services.common.generated.gensearch.query_understanding.v1 import (
    query_understanding_pb2,
    query_understanding_pb2_grpc,
)
from services.common.onnx_sessions import providers_in_use
from services.query_understanding.config import QueryUnderstandingSettings
from services.query_understanding.engine import QueryUnderstander

SERVICE_NAME = "gensearch.query_understanding.v1.QueryUnderstandingService"
MAX_BATCH_REQUESTS = 256


class QueryUnderstandingApp(query_understanding_pb2_grpc.QueryUnderstandingServiceServicer):
    """Servicer plus lifecycle (``load``/``close``) for the shared runtime."""

    service_names: Sequence[str] = (SERVICE_NAME,)

    def __init__(
        self,
        settings: QueryUnderstandingSettings,
        loader: Callable[[QueryUnderstandingSettings], QueryUnderstander],
    ) -> None:
        self.settings = settings
        self._loader = loader
        self.engine: QueryUnderstander | None = None

    def register(self, server: aio.Server) -> None:
        query_understanding_pb2_grpc.add_QueryUnderstandingServiceServicer_to_server(self, server)

    async def load(self) -> None:
        self.engine = await asyncio.to_thread(self._loader, self.settings)

    async def close(self) -> None:
        self.engine = None

    def _ready(self) -> QueryUnderstander:
        if self.engine is None:
            raise NotReadyError("query-understanding models are still loading")
        return self.engine

    # One short query costs a few milliseconds of ONNX time, which releases the GIL: run
    # inline (a thread hop would add to every call) -- the runtime's concurrency limit bounds
    # how many wait.
    async def Understand(  # noqa: N802 (gRPC method name)
        self, request: query_understanding_pb2.UnderstandRequest, context: aio.ServicerContext
    ) -> query_understanding_pb2.UnderstandResponse:
        return self._ready().understand([request])[0]

    async def BatchUnderstand(  # noqa: N802
        self, request: query_understanding_pb2.BatchUnderstandRequest, context: aio.ServicerContext
    ) -> query_understanding_pb2.BatchUnderstandResponse:
        if not 1 <= len(request.requests) <= MAX_BATCH_REQUESTS:
            raise InvalidInputError(f"1..{MAX_BATCH_REQUESTS} requests per batch")
        engine = self._ready()
        replies = await asyncio.to_thread(engine.understand, list(request.requests))
        return query_understanding_pb2.BatchUnderstandResponse(responses=replies)

    async def GetInfo(  # noqa: N802
        self, request: query_understanding_pb2.GetInfoRequest, context: aio.ServicerContext
    ) -> common_pb2.ArtifactInfo:
        engine = self._ready()
        return common_pb2.ArtifactInfo(
            version=engine.version,
            manifest_sha256=engine.manifest_sha256,
            models=engine.model_names,
            execution_providers=providers_in_use(),
        )
