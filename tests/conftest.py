"""Fixtures shared by the whole suite: a private Redis server, a built artifact repository.

Artifacts: ``$GENSEARCH_TEST_ARTIFACT_DIR`` when it holds a built repository
(``make test`` builds one there first), otherwise a quick build into a temporary
directory once per session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.common.artifacts import ArtifactRepository
from services.common.errors import NotFoundError
from tests.support import REPO_ROOT, free_port


class RedisServer:
    """A ``redis-server`` of our own on a free port (never the machine's shared one)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                if client.ping():
                    return
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


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
