"""The RAG rerank gRPC servicer: messages in, the reranker does the work."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from grpc import aio

from services.common.errors import NotReadyError
from services.common.generated.gensearch.common.v1 import common_pb2
from services.common.generated.gensearch.rag_rerank.v1 import rag_rerank_pb2, rag_rerank_pb2_grpc
from services.common.onnx_sessions import providers_in_use
from services.rag_rerank.config import RagRerankSettings
from services.rag_rerank.engine import Reranker
from services.rag_rerank.model import VARIANTS

SERVICE_NAME = "gensearch.rag_rerank.v1.RagRerankService"


class RagRerankApp(rag_rerank_pb2_grpc.RagRerankServiceServicer):
    """Servicer plus lifecycle (``load``/``close``) for the shared runtime."""

    service_names: Sequence[str] = (SERVICE_NAME,)

    def __init__(
        self, settings: RagRerankSettings, loader: Callable[[RagRerankSettings], Reranker]
    ) -> None:
        self.settings = settings
        self._loader = loader
        self.reranker: Reranker | None = None

    def register(self, server: aio.Server) -> None:
        rag_rerank_pb2_grpc.add_RagRerankServiceServicer_to_server(self, server)

    async def load(self) -> None:
        self.reranker = await asyncio.to_thread(self._loader, self.settings)

    async def close(self) -> None:
        self.reranker = None

    def _ready(self) -> Reranker:
        if self.reranker is None:
            raise NotReadyError("the reranker is still loading")
        return self.reranker

    # 20 documents cost ~10-40 ms of ONNX time: off the event loop, so health checks and
    # other calls are answered meanwhile (ONNX Runtime releases the GIL).
    async def Rerank(  # noqa: N802 (gRPC method name)
        self, request: rag_rerank_pb2.RerankRequest, context: aio.ServicerContext
    ) -> rag_rerank_pb2.RerankResponse:
        return await asyncio.to_thread(self._ready().rerank, request)

    async def GetInfo(  # noqa: N802
        self, request: rag_rerank_pb2.GetInfoRequest, context: aio.ServicerContext
    ) -> common_pb2.ArtifactInfo:
        r = self._ready()
        return common_pb2.ArtifactInfo(
            version=r.version,
            manifest_sha256=r.manifest_sha256,
            models=[VARIANTS[r.variant]],
            execution_providers=providers_in_use(),
        )
