"""The whole local stack (retrieval + gateway, real processes, real Redis) for e2e tests.

Artifacts: ``$GENSEARCH_TEST_ARTIFACT_DIR`` when it holds a built repository
(fast local reruns), otherwise a quick build into a temporary directory once
per session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from loadtest.local_stack import REPO_ROOT, Stack, start_stack
from services.common.artifacts import ArtifactRepository
from services.common.errors import NotFoundError
from tests.conftest import RedisServer

__all__ = ["Stack", "start_stack"]


@pytest.fixture(scope="session")
def artifact_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("GENSEARCH_TEST_ARTIFACT_DIR")
    if given:
        try:
            ArtifactRepository(Path(given)).current()
            return Path(given)
        except NotFoundError:
            pass
    root = Path(given) if given else tmp_path_factory.mktemp("artifacts")
    subprocess.run(
        [sys.executable, "-m", "models_export", "artifacts", "--quick", "--out", str(root)],
        cwd=REPO_ROOT,
        check=True,
    )
    return root


@pytest.fixture(scope="session")
def redis_stack(
    artifact_root: Path, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("stack-logs")
    with ExitStack() as stack:
        yield start_stack(stack, artifact_root, logs, redis_url=redis_server.url)
