"""The ranking gRPC servicer: messages in, the ranker does the work."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from grpc import aio

from services.common.errors import NotReadyError
from services.common.generated.gensearch.common.v1 import common_pb2
from services.common.generated.gensearch.ranking.v1 import ranking_pb2, ranking_pb2_grpc
from services.common.onnx_sessions import providers_in_use
from services.ranking.config import RankingSettings
from services.ranking.engine import Ranker

SERVICE_NAME = "gensearch.ranking.v1.RankingService"


class RankingApp(ranking_pb2_grpc.RankingServiceServicer):
    """Servicer plus lifecycle (``load``/``close``) for the shared runtime."""

    service_names: Sequence[str] = (SERVICE_NAME,)

    def __init__(
        self, settings: RankingSettings, loader: Callable[[RankingSettings], Ranker]
    ) -> None:
        self.settings = settings
        self._loader = loader
        self.ranker: Ranker | None = None

    def register(self, server: aio.Server) -> None:
        ranking_pb2_grpc.add_RankingServiceServicer_to_server(self, server)

    async def load(self) -> None:
        self.ranker = await asyncio.to_thread(self._loader, self.settings)

    async def close(self) -> None:
        if self.ranker is not None:
            await self.ranker.features.close()
        self.ranker = None

    def _ready(self) -> Ranker:
        if self.ranker is None:
            raise NotReadyError("the ranker is still loading")
        return self.ranker

    # A list of 100 costs about a millisecond of numpy and ONNX time: run inline (a thread
    # hop would add to every call); the runtime's concurrency limit bounds how many wait.
    async def Rank(  # noqa: N802 (gRPC method name)
        self, request: ranking_pb2.RankRequest, context: aio.ServicerContext
    ) -> ranking_pb2.RankResponse:
        return await self._ready().rank(request)

    async def GetInfo(  # noqa: N802
        self, request: ranking_pb2.GetInfoRequest, context: aio.ServicerContext
    ) -> common_pb2.ArtifactInfo:
        ranker = self._ready()
        return common_pb2.ArtifactInfo(
            version=ranker.version,
            manifest_sha256=ranker.manifest_sha256,
            models=ranker.model_names,
            execution_providers=providers_in_use(),
        )
