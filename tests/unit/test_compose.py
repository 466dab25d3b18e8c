"""docker-compose.yml: valid against the Compose Specification and built the way we operate it.

Checks, without a Docker engine: the file validates against the compose-spec JSON schema
vendored by check-jsonschema (and a broken copy does not); the gensearch services share one
image; gRPC services are health-checked with grpc.health.v1 and the gateway with /readyz;
dependencies wait for healthy services; every service has resource limits; Prometheus
scrapes every gensearch service; the Dockerfile pins its base image and runs as a non-root user.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
THIRD_PARTY = {"redis", "prometheus", "grafana"}
GRPC_PORTS = {
    "retrieval": 50051,
    "query_understanding": 50052,
    "ranking": 50053,
    "rag_rerank": 50054,
}
ENV_PREFIXES = {
    "retrieval": "RETRIEVAL",
    "query_understanding": "QU",
    "ranking": "RANKING",
    "rag_rerank": "RAG_RERANK",
}
METRICS_PORTS = {
    "retrieval": 9101,
    "query_understanding": 9102,
    "ranking": 9103,
    "rag_rerank": 9104,
    "gateway": 8000,
}
IMAGE = "gensearch:local"
DOCKERFILE = "deploy/docker/Dockerfile"


def _compose_schema() -> dict[str, Any]:
    ref = importlib.resources.files("check_jsonschema") / "builtin_schemas/vendor/compose-spec.json"
    schema: dict[str, Any] = json.loads(ref.read_text(encoding="utf-8"))
    return schema


def _validate(document: dict[str, Any]) -> None:
    schema = _compose_schema()
    jsonschema.validators.validator_for(schema)(schema).validate(document)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # safe_load resolves the file's anchors and `<<` merge keys, as Compose does
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def _healthcheck_command(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


def test_file_validates_against_the_compose_spec(compose: dict[str, Any]) -> None:
    _validate(compose)


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(lambda c: c["services"]["gateway"].update(ports=8000), id="ports-not-a-list"),
        pytest.param(lambda c: c.update(servics={}), id="unknown-top-level-key"),
        pytest.param(
            lambda c: c["services"]["retrieval"]["healthcheck"].update(retrys=3),
            id="misspelt-healthcheck-key",
        ),
        pytest.param(
            lambda c: c["services"]["gateway"]["depends_on"]["redis"].update(condition="up"),
            id="unknown-depends-on-condition",
        ),
    ],
)
def test_a_broken_copy_fails_validation(compose: dict[str, Any], breakage: Any) -> None:
    broken = copy.deepcopy(compose)
    breakage(broken)
    with pytest.raises(jsonschema.ValidationError):
        _validate(broken)


def test_expected_services_exist(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == THIRD_PARTY | set(METRICS_PORTS)


def test_gensearch_services_share_one_image(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name in THIRD_PARTY:
            continue
        assert service["image"] == IMAGE, name
        assert service["build"]["dockerfile"] == DOCKERFILE, name
        assert "./artifacts:/artifacts:ro" in service["volumes"], f"{name}: artifacts read-only"


def test_third_party_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name in THIRD_PARTY:
        image = services[name]["image"]
        tag = image.rsplit(":", 1)[-1]
        assert ":" in image and tag != "latest" and any(c.isdigit() for c in tag), image


def test_grpc_services_use_the_grpc_health_protocol(services: dict[str, dict[str, Any]]) -> None:
    for name, port in GRPC_PORTS.items():
        command = _healthcheck_command(services[name])
        assert "grpc_health.v1" in command and "HealthStub" in command, name
        assert f"127.0.0.1:{port}" in command, f"{name}: health check on its own port"


def test_gateway_health_is_readiness_not_a_port_probe(services: dict[str, dict[str, Any]]) -> None:
    command = _healthcheck_command(services["gateway"])
    assert "/readyz" in command
    for port_probe in ("nc ", "/dev/tcp", "socket"):
        assert port_probe not in command


def test_redis_is_checked_with_ping(services: dict[str, dict[str, Any]]) -> None:
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_dependencies_wait_for_healthy_services(services: dict[str, dict[str, Any]]) -> None:
    assert services["gateway"]["depends_on"].keys() >= {"redis", *GRPC_PORTS}
    assert "redis" in services["ranking"]["depends_on"], "ranking reads features from Redis"
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on needs the long form"
        for dependency, spec in depends_on.items():
            if "healthcheck" in services[dependency]:
                assert spec["condition"] == "service_healthy", f"{name} -> {dependency}"


def test_every_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), name


def test_every_service_has_resource_limits(services: dict[str, dict[str, Any]]) -> None:
    cpus = {}
    for name, service in services.items():
        limits = service["deploy"]["resources"]["limits"]
        assert limits.get("memory"), name
        cpus[name] = float(limits["cpus"])
    assert max(cpus, key=lambda n: cpus[n]) == "retrieval", "retrieval is the CPU-heavy one"


def test_stop_grace_period_outlasts_the_drain(services: dict[str, dict[str, Any]]) -> None:
    for name, prefix in ENV_PREFIXES.items():
        service = services[name]
        grace = float(service["environment"][f"GENSEARCH_{prefix}_GRACE_SECONDS"])
        assert float(service["stop_grace_period"].removesuffix("s")) > grace, name


def test_prometheus_scrapes_every_gensearch_service(services: dict[str, dict[str, Any]]) -> None:
    for name, prefix in ENV_PREFIXES.items():
        env = services[name]["environment"]
        assert int(env[f"GENSEARCH_{prefix}_METRICS_PORT"]) == METRICS_PORTS[name], name
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    for name, port in METRICS_PORTS.items():
        assert f"{name}:{port}" in targets, name


def test_dockerfile_pins_its_base_and_runs_non_root() -> None:
    text = (ROOT / DOCKERFILE).read_text()
    arguments = dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.MULTILINE))
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: arguments[m.group(1)], base)
        for base in re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    ]
    assert bases
    for base in bases:
        # an exact patch release (python:3.11.13-slim-bookworm) or a digest
        assert "@sha256:" in base or re.search(r":\d+\.\d+\.\d+", base), base
    users = re.findall(r"^USER (\S+)", text, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) > 0
