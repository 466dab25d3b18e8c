"""The ``grpc.aio`` server bootstrap every service uses.

It wires the standard health service (NOT_SERVING until the service's
``load()`` returns), reflection, the interceptors, the Prometheus endpoint and
graceful shutdown on SIGTERM/SIGINT: health → NOT_SERVING, drain in-flight
calls for ``grace_seconds`` while refusing new ones, then ``close()``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from typing import Protocol

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from services.common.config import ServiceSettings
from services.common.interceptors import (
    ErrorMappingInterceptor,
    MetricsInterceptor,
    RequestContextInterceptor,
)
from services.common.metrics import SERVICE_READY, start_metrics_server

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ServiceApp(Protocol):
    """What a service plugs into the runtime."""

    #: Fully qualified gRPC service names, e.g. ``gensearch.retrieval.v1.RetrievalService``.
    service_names: Sequence[str]

    def register(self, server: aio.Server) -> None:
        """Add the servicers to ``server``."""

    async def load(self) -> None:
        """Load and warm models; health turns SERVING only after this returns."""

    async def close(self) -> None:
        """Release resources after the server has drained."""


class GrpcService:
    """One running gRPC service process."""

    def __init__(self, name: str, app: ServiceApp, settings: ServiceSettings) -> None:
        self.name = name
        self.app = app
        self.settings = settings
        self.health = HealthServicer()
        self.port = 0
        self.metrics_port = 0
        self._stopping = asyncio.Event()
        self.server = aio.server(
            interceptors=[
                MetricsInterceptor(name),
                ErrorMappingInterceptor(),
                RequestContextInterceptor(settings.default_deadline_seconds),
            ],
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        )

    async def start(self) -> None:
        """Bind, start answering health (NOT_SERVING), then load and go SERVING."""
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.app.register(self.server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        names = [*self.app.service_names, health_name]
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], self.server)
        for service in ["", *self.app.service_names]:
            await self.health.set(service, NOT_SERVING)
        SERVICE_READY.labels(self.name).set(0)
        self.port = self.server.add_insecure_port(f"{self.settings.host}:{self.settings.port}")
        await self.server.start()
        if self.settings.metrics_port:
            self.metrics_port = start_metrics_server(self.settings.metrics_port, self.settings.host)
        log.info(
            "listening",
            extra={"port": self.port, "metrics_port": self.metrics_port, "state": "loading"},
        )
        await self.app.load()
        for service in ["", *self.app.service_names]:
            await self.health.set(service, SERVING)
        SERVICE_READY.labels(self.name).set(1)
        log.info("serving", extra={"port": self.port})

    def request_stop(self) -> None:
        """Ask for a graceful stop (safe to call from a signal handler)."""
        self._stopping.set()

    async def stop(self) -> None:
        """Graceful stop: NOT_SERVING, drain within the grace period, release resources."""
        await self.health.enter_graceful_shutdown()
        SERVICE_READY.labels(self.name).set(0)
        log.info("draining", extra={"grace_seconds": self.settings.grace_seconds})
        await self.server.stop(self.settings.grace_seconds)
        await self.app.close()
        log.info("stopped")

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
        except BaseException:
            log.exception("start failed")
            await self.server.stop(0)
            await self.app.close()
            raise
        await self._stopping.wait()
        await self.stop()


def serve(name: str, app: ServiceApp, settings: ServiceSettings) -> None:
    """Run ``app`` as a gRPC service until terminated (the body of each ``__main__``)."""

    async def main() -> None:
        # The aio server must be created inside the running event loop.
        await GrpcService(name, app, settings).run()

    asyncio.run(main())
