"""The shared gRPC runtime, exercised through a real probe service process."""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.common.generated.gensearch.common.v1 import common_pb2
from tests.support import free_port, health, running_process, wait_for

pytestmark = pytest.mark.integration

WORK = "/gensearch.test.v1.Probe/Work"


class Probe:
    def __init__(self, proc: Any, port: int, metrics_port: int, log: Path) -> None:
        self.proc, self.port, self.metrics_port, self.log = proc, port, metrics_port, log
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.work = self.channel.unary_unary(
            WORK,
            request_serializer=common_pb2.StageTiming.SerializeToString,
            response_deserializer=common_pb2.StageTiming.FromString,
        )

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=2).read().decode()
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def work_steps(self) -> float:
        return self.metrics()[("gensearch_probe_work_steps_total", ())]


def start_probe(tmp_path: Path, load_seconds: float = 0.0, grace: float = 5.0) -> Any:
    port, metrics_port = free_port(), free_port()
    env = {
        "PROBE_PORT": str(port),
        "PROBE_METRICS_PORT": str(metrics_port),
        "PROBE_LOAD_SECONDS": str(load_seconds),
        "PROBE_GRACE_SECONDS": str(grace),
    }
    log = tmp_path / "probe.log"
    cm = running_process(["-m", "tests.integration.probe_service"], env, log)
    proc = cm.__enter__()
    return cm, Probe(proc, port, metrics_port, log)


@pytest.fixture
def probe(tmp_path: Path) -> Iterator[Probe]:
    cm, p = start_probe(tmp_path)
    wait_for(lambda: health(p.port) == "SERVING", 20, "probe SERVING")
    yield p
    p.channel.close()
    cm.__exit__(None, None, None)


def test_health_is_not_serving_until_loaded(tmp_path: Path) -> None:
    cm, p = start_probe(tmp_path, load_seconds=2.0)
    try:
        wait_for(lambda: health(p.port) != "UNREACHABLE", 20, "probe reachable")
        seen_before = health(p.port)
        seen_service_before = health(p.port, "gensearch.test.v1.Probe")
        wait_for(lambda: health(p.port) == "SERVING", 20, "probe SERVING")
        assert seen_before == "NOT_SERVING"
        assert seen_service_before == "NOT_SERVING"
        assert health(p.port, "gensearch.test.v1.Probe") == "SERVING"
    finally:
        cm.__exit__(None, None, None)


def test_deadline_exceeded_and_work_stops(probe: Probe) -> None:
    before = probe.work_steps()
    with pytest.raises(grpc.RpcError) as err:
        probe.work(common_pb2.StageTiming(stage="work", seconds=3.0), timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.3)
    settled = probe.work_steps()
    time.sleep(0.5)
    assert probe.work_steps() == settled, "server kept working after the deadline"
    assert settled - before < 100, "work should stop near 0.3 s, not run the full 3 s"


def test_bad_input_is_invalid_argument_with_message(probe: Probe) -> None:
    with pytest.raises(grpc.RpcError) as err:
        probe.work(common_pb2.StageTiming(stage="invalid", seconds=-1), timeout=2)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "seconds must be >= 0" in (err.value.details() or "")


def test_unexpected_error_is_internal_without_details(probe: Probe) -> None:
    with pytest.raises(grpc.RpcError) as err:
        probe.work(common_pb2.StageTiming(stage="crash"), timeout=2)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    details = err.value.details() or ""
    assert "secret" not in details and "Traceback" not in details
    assert "internal error" in details


def test_metrics_endpoint_exposes_calls(probe: Probe) -> None:
    reply = probe.work(common_pb2.StageTiming(stage="work", seconds=0.02), timeout=2)
    assert reply.stage == "done"
    with pytest.raises(grpc.RpcError):
        probe.work(common_pb2.StageTiming(stage="invalid"), timeout=2)
    labels_ok = (("code", "OK"), ("method", "Work"), ("service", "probe"))
    labels_bad = (("code", "INVALID_ARGUMENT"), ("method", "Work"), ("service", "probe"))
    # an aborted call's status reaches the client before the server's metrics interceptor
    # counts it, so a scrape right after the error can precede the count
    bad_key = ("gensearch_grpc_server_handled_total", labels_bad)
    wait_for(lambda: bad_key in probe.metrics(), 5, "the INVALID_ARGUMENT call's count")
    samples = probe.metrics()
    assert samples[("gensearch_grpc_server_handled_total", labels_ok)] >= 1
    assert samples[("gensearch_grpc_server_handled_total", labels_bad)] >= 1
    count_key = (
        "gensearch_grpc_server_handling_seconds_count",
        (("method", "Work"), ("service", "probe")),
    )
    assert samples[count_key] >= 2
    assert samples[("gensearch_service_ready", (("service", "probe"),))] == 1


def test_sigterm_drains_in_flight_and_refuses_new(tmp_path: Path) -> None:
    cm, p = start_probe(tmp_path, grace=5.0)
    try:
        wait_for(lambda: health(p.port) == "SERVING", 20, "probe SERVING")
        result: dict[str, Any] = {}

        def in_flight() -> None:
            try:
                result["reply"] = p.work(
                    common_pb2.StageTiming(stage="work", seconds=1.0), timeout=5
                )
            except grpc.RpcError as exc:
                result["error"] = exc.code()

        thread = threading.Thread(target=in_flight)
        thread.start()
        time.sleep(0.3)
        p.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as err:
            p.work(common_pb2.StageTiming(stage="work", seconds=0.01), timeout=1)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        thread.join(timeout=5)
        assert "error" not in result, f"in-flight call failed: {result.get('error')}"
        assert result["reply"].stage == "done"
        assert p.proc.wait(timeout=10) == 0
        assert b"draining" in p.log.read_bytes()
    finally:
        p.channel.close()
        cm.__exit__(None, None, None)
