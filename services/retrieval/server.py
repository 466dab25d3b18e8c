"""The retrieval gRPC servicer: messages in, the engine and the batcher do the work."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from grpc import aio

from services.common.deadline import Deadline
from services.common.errors import InvalidInputError, NotReadyError
from services.common.generated.gensearch.common.v1 import common_pb2
from services.common.generated.gensearch.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.common.interceptors import current_deadline
from services.common.onnx_sessions import providers_in_use
from services.retrieval.batching import DynamicBatcher
from services.retrieval.config import RetrievalSettings
from services.retrieval.engine import DecodeJob, RetrievalEngine
from services.retrieval.hybrid import collect, start_side_sources
from services.retrieval.metrics import QUEUE_SECONDS

SERVICE_NAME = "gensearch.retrieval.v1.RetrievalService"
MAX_BATCH_REQUESTS = 64


class RetrievalApp(retrieval_pb2_grpc.RetrievalServiceServicer):
    """Servicer plus lifecycle (``load``/``close``) for the shared runtime."""

    service_names: Sequence[str] = (SERVICE_NAME,)

    def __init__(
        self, settings: RetrievalSettings, loader: Callable[[RetrievalSettings], RetrievalEngine]
    ) -> None:
        self.settings = settings
        self._loader = loader
        self.engine: RetrievalEngine | None = None
        self.batcher: DynamicBatcher[DecodeJob, list[tuple[int, float]]] | None = None

    def register(self, server: aio.Server) -> None:
        retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(self, server)

    async def load(self) -> None:
        engine = await asyncio.to_thread(self._loader, self.settings)
        self.batcher = DynamicBatcher(
            engine.decode_batch,
            max_batch_size=self.settings.max_batch_size,
            max_queue_delay=self.settings.max_queue_delay_ms / 1000.0,
            key=lambda job: (job.beam_width, id(job.trie)),
            on_queue=QUEUE_SECONDS.observe,
        )
        self.batcher.start()
        self.engine = engine

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()

    def _ready(self) -> tuple[RetrievalEngine, DynamicBatcher[DecodeJob, list[tuple[int, float]]]]:
        if self.engine is None or self.batcher is None:
            raise NotReadyError("retrieval models are still loading")
        return self.engine, self.batcher

    async def _retrieve(
        self, request: retrieval_pb2.RetrieveRequest, deadline: Deadline
    ) -> retrieval_pb2.RetrieveResponse:
        engine, batcher = self._ready()
        start = time.perf_counter()
        prepared = engine.prepare(request, deadline)
        side_tasks = start_side_sources(engine, prepared, deadline)
        job = engine.job(prepared) if prepared.decodes else None
        prepared_at = time.perf_counter()
        decoded = await batcher.submit(job) if job is not None else []
        side = await collect(side_tasks)
        decoded_at = time.perf_counter()
        deadline.check("ANN fill")
        response = engine.finish(prepared, decoded, side)
        if request.meta.debug:
            response.timings.extend(
                [
                    common_pb2.StageTiming(stage="prepare", seconds=prepared_at - start),
                    common_pb2.StageTiming(
                        stage="queue+decode+sources", seconds=decoded_at - prepared_at
                    ),
                    common_pb2.StageTiming(
                        stage="finish", seconds=time.perf_counter() - decoded_at
                    ),
                ]
            )
        return response

    async def Retrieve(  # noqa: N802 (gRPC method name)
        self, request: retrieval_pb2.RetrieveRequest, context: aio.ServicerContext
    ) -> retrieval_pb2.RetrieveResponse:
        return await self._retrieve(request, current_deadline())

    async def BatchRetrieve(  # noqa: N802
        self, request: retrieval_pb2.BatchRetrieveRequest, context: aio.ServicerContext
    ) -> retrieval_pb2.BatchRetrieveResponse:
        if not 1 <= len(request.requests) <= MAX_BATCH_REQUESTS:
            raise InvalidInputError(f"1..{MAX_BATCH_REQUESTS} requests per batch")
        deadline = current_deadline()
        replies = await asyncio.gather(*(self._retrieve(r, deadline) for r in request.requests))
        return retrieval_pb2.BatchRetrieveResponse(responses=replies)

    async def GetInfo(  # noqa: N802
        self, request: retrieval_pb2.GetInfoRequest, context: aio.ServicerContext
    ) -> common_pb2.ArtifactInfo:
        engine, _ = self._ready()
        return common_pb2.ArtifactInfo(
            version=engine.version,
            manifest_sha256=engine.manifest_sha256,
            models=engine.model_names,
            execution_providers=providers_in_use(),
        )
