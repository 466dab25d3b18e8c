"""Start the local stack (retrieval, query understanding and the gateway as real processes)
for tests and benchmarks."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parent.parent


#: ports handed out below the kernel's ephemeral range (32768-60999 by default), so that
#: an outgoing connection's source port cannot take one before its server binds it (a
#: retrieval process once failed to start on a port the kernel had given a client)
_PORT_RANGE = (20000, 32000)
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago and is not one this process
    handed out before, chosen outside the ephemeral range."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(*_PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {_PORT_RANGE}")


def health(port: int, service: str = "", timeout: float = 0.5) -> str:
    """Health status name of ``service`` on ``127.0.0.1:port`` (UNREACHABLE on error)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``predicate()`` until true; raise ``TimeoutError`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@contextmanager
def running_process(
    args: Sequence[str], env: Mapping[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``python <args>`` from the repo root with extra ``env``; stop it on exit."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=REPO_ROOT, env=full_env, stdout=log, stderr=log
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


class RedisServer:
    """A ``redis-server`` of our own on a free port (never the machine's shared one); a
    restart (``stop`` then ``start``) keeps the port and comes back empty."""

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
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
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


@dataclass
class Stack:
    """A running gateway + retrieval pair."""

    base: str
    retrieval_port: int
    retrieval_proc: subprocess.Popen[bytes]
    gateway_proc: subprocess.Popen[bytes]
    logs: Path
    query_understanding: ServiceProcess | None = None
    ranking: ServiceProcess | None = None
    retrieval_metrics_port: int = 0
    rag_rerank: ServiceProcess | None = None

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        """One HTTP call; returns (status, lower-cased headers, parsed JSON body)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"content-type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as reply:
                raw = reply.read()
                heads = {k.lower(): v for k, v in reply.headers.items()}
                return reply.status, heads, json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")
            return err.code, {k.lower(): v for k, v in err.headers.items()}, parsed

    def search(self, **body: Any) -> tuple[int, Any]:
        status, _, payload = self.request("POST", "/v1/search", body)
        return status, payload

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.base + "/metrics", timeout=5) as reply:
            return str(reply.read().decode())


def start_stack(
    stack: ExitStack,
    artifact_root: Path,
    logs: Path,
    *,
    redis_url: str = "",
    gateway_env: Mapping[str, str] | None = None,
    retrieval_env: Mapping[str, str] | None = None,
    query_understanding: bool | None = None,
    ranking: bool | None = None,
    ranking_env: Mapping[str, str] | None = None,
    rag_rerank: bool | None = None,
    ready_timeout: float = 180.0,
) -> Stack:
    """Start retrieval, query understanding, ranking and RAG rerank (``None``: when the
    artifact has their models) and the gateway; return once the gateway's ``/readyz`` is 200
    and the optional services are SERVING."""
    if query_understanding is None:
        query_understanding = has_query_understanding(artifact_root)
    if ranking is None:
        ranking = has_ranker(artifact_root)
    if rag_rerank is None:
        rag_rerank = has_rag_reranker(artifact_root)
    rport, gport, rmetrics = free_port(), free_port(), free_port()
    common = {"GENSEARCH_ARTIFACT_DIR": str(artifact_root)}
    retrieval = stack.enter_context(
        running_process(
            ["-m", "services.retrieval"],
            {
                **common,
                "GENSEARCH_RETRIEVAL_PORT": str(rport),
                "GENSEARCH_RETRIEVAL_METRICS_PORT": str(rmetrics),
                "GENSEARCH_RETRIEVAL_GRACE_SECONDS": "1",
                **(retrieval_env or {}),
            },
            logs / "retrieval.log",
        )
    )
    qu = start_service(stack, QU, artifact_root, logs, wait=False) if query_understanding else None
    # with Redis, ranking reads the features the gateway materialises, under its prefix
    rk_env = (
        {"GENSEARCH_RANKING_REDIS_URL": redis_url, "GENSEARCH_RANKING_REDIS_PREFIX": f"gs{gport}"}
        if redis_url
        else {}
    )
    rk = (
        start_service(
            stack, RANKING, artifact_root, logs, env={**rk_env, **(ranking_env or {})}, wait=False
        )
        if ranking
        else None
    )
    rag = start_service(stack, RAG_RERANK, artifact_root, logs, wait=False) if rag_rerank else None
    gateway = stack.enter_context(
        running_process(
            ["-m", "services.gateway"],
            {
                **common,
                "GENSEARCH_GATEWAY_PORT": str(gport),
                "GENSEARCH_GATEWAY_RETRIEVAL_ADDR": f"127.0.0.1:{rport}",
                "GENSEARCH_GATEWAY_QUERY_UNDERSTANDING_ADDR": f"127.0.0.1:{qu.port}" if qu else "",
                "GENSEARCH_GATEWAY_RANKING_ADDR": f"127.0.0.1:{rk.port}" if rk else "",
                "GENSEARCH_GATEWAY_RAG_RERANK_ADDR": f"127.0.0.1:{rag.port}" if rag else "",
                "GENSEARCH_GATEWAY_REDIS_URL": redis_url,
                "GENSEARCH_GATEWAY_REDIS_KEY_PREFIX": f"gs{gport}",
                "GENSEARCH_GATEWAY_BREAKER_RESET_SECONDS": "0.5",
                **(gateway_env or {}),
            },
            logs / "gateway.log",
        )
    )
    s = Stack(f"http://127.0.0.1:{gport}", rport, retrieval, gateway, logs, qu, rk, rmetrics, rag)
    procs = [(retrieval, "retrieval"), (gateway, "gateway")]
    optional = [p for p in (qu, rk, rag) if p is not None]
    procs += [(p.proc, p.name) for p in optional]

    def ready() -> bool:
        for proc, name in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited early; see {logs / (name + '.log')}")
        if any(health(p.port) != "SERVING" for p in optional):
            return False
        try:
            return s.request("GET", "/readyz")[0] == 200
        except OSError:
            return False

    wait_for(ready, ready_timeout, "gateway ready")
    return s


def has_query_understanding(artifact_root: Path) -> bool:
    """Whether the CURRENT version under ``artifact_root`` has query-understanding models."""
    from services.common.artifacts import ArtifactRepository
    from services.query_understanding.lexicon import LEXICON_FILE

    return ArtifactRepository(artifact_root).open().has(LEXICON_FILE)


def has_ranker(artifact_root: Path) -> bool:
    """Whether the CURRENT version under ``artifact_root`` has the ranking models."""
    from services.common.artifacts import ArtifactRepository
    from services.ranking.model import RANKER_MODEL

    return ArtifactRepository(artifact_root).open().has(RANKER_MODEL)


def has_rag_reranker(artifact_root: Path) -> bool:
    """Whether the CURRENT version under ``artifact_root`` has the RAG reranker."""
    from services.common.artifacts import ArtifactRepository
    from services.rag_rerank.model import RERANKER_CONFIG

    return ArtifactRepository(artifact_root).open().has(RERANKER_CONFIG)


@dataclass(frozen=True)
class ServiceKind:
    """How to start one gRPC service: its module, name and settings' env prefix."""

    module: str
    name: str
    env_prefix: str


RETRIEVAL = ServiceKind("services.retrieval", "retrieval", "GENSEARCH_RETRIEVAL_")
QU = ServiceKind("services.query_understanding", "query_understanding", "GENSEARCH_QU_")
RANKING = ServiceKind("services.ranking", "ranking", "GENSEARCH_RANKING_")
RAG_RERANK = ServiceKind("services.rag_rerank", "rag_rerank", "GENSEARCH_RAG_RERANK_")


@dataclass
class ServiceProcess:
    """A running gRPC service."""

    name: str
    port: int
    metrics_port: int
    proc: subprocess.Popen[bytes]
    log: Path


def start_service(
    stack: ExitStack,
    kind: ServiceKind,
    artifact_root: Path,
    logs: Path,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 180.0,
    wait: bool = True,
    port: int = 0,
    metrics_port: int = 0,
    log_name: str = "",
) -> ServiceProcess:
    """Start ``python -m <kind.module>`` (on free ports unless ``port``/``metrics_port``
    are given: a restart in place); return once its health is SERVING (``wait``)."""
    port, metrics_port = port or free_port(), metrics_port or free_port()
    log = logs / (log_name or f"{kind.name}.log")
    p = kind.env_prefix
    proc = stack.enter_context(
        running_process(
            ["-m", kind.module],
            {
                "GENSEARCH_ARTIFACT_DIR": str(artifact_root),
                f"{p}PORT": str(port),
                f"{p}METRICS_PORT": str(metrics_port),
                f"{p}GRACE_SECONDS": "1",
                **(env or {}),
            },
            log,
        )
    )

    def serving() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind.name} exited early; see {log}")
        return health(port) == "SERVING"

    if wait:
        wait_for(serving, ready_timeout, f"{kind.name} SERVING")
    return ServiceProcess(kind.name, port, metrics_port, proc, log)


def start_retrieval(
    stack: ExitStack,
    artifact_root: Path,
    logs: Path,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 180.0,
) -> ServiceProcess:
    """Start ``python -m services.retrieval`` alone; return once its health is SERVING."""
    return start_service(stack, RETRIEVAL, artifact_root, logs, env, ready_timeout)
