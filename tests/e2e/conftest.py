"""The whole local stack (retrieval + gateway, real processes, real Redis) for e2e tests.

Artifacts come from the session fixture ``artifact_root`` in ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from loadtest.local_stack import Stack, start_stack
from tests.conftest import RedisServer

__all__ = ["Stack", "start_stack"]


@pytest.fixture(scope="session")
def redis_stack(
    artifact_root: Path, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("stack-logs")
    with ExitStack() as stack:
        yield start_stack(stack, artifact_root, logs, redis_url=redis_server.url)
