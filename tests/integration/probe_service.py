"""A minimal real service built on the shared runtime, for the runtime's integration tests.

It answers ``gensearch.test.v1.Probe/Work`` with the shared ``StageTiming``
message (no extra proto needed): ``stage`` picks the behaviour and
``seconds`` how long to work. Its ``load()`` takes ``PROBE_LOAD_SECONDS``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any

import grpc
from grpc import aio
from prometheus_client import Counter
from pydantic_settings import SettingsConfigDict

from services.common.config import ServiceSettings, load_settings
from services.common.errors import InvalidInputError
from services.common.generated.gensearch.common.v1 import common_pb2
from services.common.grpc_server import serve
from services.common.logging import configure_logging

SERVICE = "gensearch.test.v1.Probe"
WORK_STEPS = Counter("gensearch_probe_work_steps_total", "10 ms work steps completed.")


class ProbeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PROBE_", extra="ignore", frozen=True)
    load_seconds: float = 0.0


class ProbeApp:
    service_names: Sequence[str] = (SERVICE,)

    def __init__(self, load_seconds: float) -> None:
        self.load_seconds = load_seconds

    def register(self, server: aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(
            self.work,
            request_deserializer=common_pb2.StageTiming.FromString,
            response_serializer=common_pb2.StageTiming.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Work": handler}),)
        )

    async def load(self) -> None:
        await asyncio.sleep(self.load_seconds)

    async def close(self) -> None:
        return None

    async def work(self, request: common_pb2.StageTiming, context: Any) -> common_pb2.StageTiming:
        if request.stage == "invalid":
            raise InvalidInputError(f"seconds must be >= 0, got {request.seconds}")
        if request.stage == "crash":
            raise RuntimeError("secret internal detail")
        start = time.perf_counter()
        while time.perf_counter() - start < request.seconds:
            await asyncio.sleep(0.01)
            WORK_STEPS.inc()
        return common_pb2.StageTiming(stage="done", seconds=time.perf_counter() - start)


def main() -> None:
    settings = load_settings(ProbeSettings)
    configure_logging("probe", settings.log_level)
    serve("probe", ProbeApp(settings.load_seconds), settings)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
