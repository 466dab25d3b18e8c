"""A real Prometheus server (Debian's package) on loopback scrapes the local stack under a
short load; a per-stage p99 comes back through its HTTP API from our recording rules, and
every Grafana panel's PromQL is accepted by it."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadtest.local_stack import Stack, start_stack
from tests.support import free_port, wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "gensearch.json"


class Prometheus:
    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return json.loads(reply.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        doc = self.get("/api/v1/query", query=expr)
        assert doc["status"] == "success", doc
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result


@pytest.fixture(scope="module")
def scraped(
    artifact_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, Prometheus]]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed (apt-get install prometheus)")
    work = tmp_path_factory.mktemp("prometheus")
    with ExitStack() as stack:
        s = start_stack(stack, artifact_root, work)
        targets = {
            "gateway": s.base.removeprefix("http://"),
            "retrieval": f"127.0.0.1:{s.retrieval_metrics_port}",
        }
        for service in (s.query_understanding, s.ranking):
            if service is not None:
                targets[service.name] = f"127.0.0.1:{service.metrics_port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [addr]}]}
                for job, addr in targets.items()
            ],
        }
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = (work / "prometheus.log").open("wb")
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=log,
        )
        stack.callback(log.close)
        stack.callback(proc.wait, 10)
        stack.callback(proc.terminate)
        prom = Prometheus(f"http://127.0.0.1:{port}")

        def ready() -> bool:
            try:
                return urllib.request.urlopen(f"{prom.base}/-/ready", timeout=1).status == 200
            except OSError:
                return False

        wait_for(ready, 30, "prometheus ready", interval=0.2)

        def scraped_once() -> bool:
            return len(prom.query("up == 1")) == len(targets)

        # rates need two scrapes around the load: wait for the first
        wait_for(scraped_once, 30, "first scrape of every target", interval=0.2)
        # a short load over a few scrapes: searches (some repeated: cache hits), feeds,
        # an unknown item
        for i in range(90):
            s.search(query=f"digital caliper {i % 30}", user_id=str(i % 7), k=10)
            if i % 10 == 0:
                s.search(query="", user_id=str(i), k=5)
                time.sleep(0.3)
        s.request("GET", "/v1/items/no-such-item")
        yield s, prom


def test_every_service_is_scraped(scraped: tuple[Stack, Prometheus]) -> None:
    s, prom = scraped
    expected = {"gateway", "retrieval"} | {
        p.name for p in (s.query_understanding, s.ranking) if p is not None
    }

    def all_up() -> bool:
        up = {r["metric"]["job"]: r["value"][1] for r in prom.query("up")}
        return set(up) == expected and all(v == "1" for v in up.values())

    wait_for(all_up, 20, "every target up", interval=0.5)


def test_per_stage_p99_comes_back_from_the_recording_rule(
    scraped: tuple[Stack, Prometheus],
) -> None:
    _, prom = scraped
    found: dict[str, float] = {}

    def has_stages() -> bool:
        rows = prom.query("gensearch:gateway_stage_seconds:p99_5m")
        found.update({r["metric"]["stage"]: float(r["value"][1]) for r in rows})
        return {"retrieval", "result_cache"} <= {k for k, v in found.items() if v == v}

    wait_for(has_stages, 30, "stage p99 recorded", interval=0.5)
    assert 0 < found["retrieval"] < 5.0, found
    grpc_rows = prom.query('gensearch:grpc_server_seconds:p99_5m{method="Retrieve"}')
    assert grpc_rows and 0 < float(grpc_rows[0]["value"][1]) < 5.0


def test_every_dashboard_query_is_accepted(scraped: tuple[Stack, Prometheus]) -> None:
    _, prom = scraped
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    assert len(exprs) >= 20
    answered = 0
    for expr in exprs:
        answered += bool(prom.query(expr))  # raises on a query Prometheus rejects
    assert answered >= len(exprs) // 2, "most panels show data after a short load"


def test_alert_rules_are_loaded(scraped: tuple[Stack, Prometheus]) -> None:
    _, prom = scraped
    doc = prom.get("/api/v1/rules")
    names = {r["name"] for g in doc["data"]["groups"] for r in g["rules"]}
    assert {"ServiceDown", "RedisErrors", "CacheHitRatioCollapsed", "SearchErrorsHigh"} <= names
    assert all(
        r.get("health") in ("ok", "unknown") for g in doc["data"]["groups"] for r in g["rules"]
    )
