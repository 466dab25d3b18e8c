"""Fixtures shared by the whole suite: a private Redis server, a built artifact repository.

Artifacts: ``$GENSEARCH_TEST_ARTIFACT_DIR`` when it holds a built repository
(``make test`` builds one there first), otherwise a quick build into a temporary
directory once per session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.local_stack import RedisServer
from services.common.artifacts import ArtifactRepository
from services.common.errors import NotFoundError
from tests.support import REPO_ROOT


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


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
