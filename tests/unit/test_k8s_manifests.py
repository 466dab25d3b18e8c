"""Kubernetes manifests: both overlays render, validate offline and follow our operating rules.

`kubectl kustomize` renders deploy/k8s/overlays/{dev,prod}; every object is validated against
the Kubernetes OpenAPI schemas shipped by kubernetes-validate in strict mode (unknown fields
fail, as a typo'd copy shows). Then: every Deployment runs non-root on a read-only root
filesystem with requests and limits, native gRPC probes (HTTP /readyz and /healthz for the
gateway), a termination grace period longer than its drain, settings from a ConfigMap,
scrape annotations, and a matching HPA and PDB; Services name their ports; dev runs Redis as a
StatefulSet, prod has none and points the services at an external Redis.
"""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("dev", "prod")
# The oldest of the newest three minors kubernetes-validate 1.37.0 ships (1.25 to 1.37), i.e.
# the oldest minor upstream still supports: a field newer than that fails validation.
KUBERNETES_VERSION = "1.35.0"
GRPC_SERVICES = {
    "retrieval": "RETRIEVAL",
    "query-understanding": "QU",
    "ranking": "RANKING",
    "rag-rerank": "RAG_RERANK",
}
DEPLOYMENTS = {*GRPC_SERVICES, "gateway"}
REDIS_CLIENTS = {"ranking": "GENSEARCH_RANKING_REDIS_URL", "gateway": "GENSEARCH_GATEWAY_REDIS_URL"}

Obj = dict[str, Any]


@functools.cache
def _render(overlay: str) -> tuple[Obj, ...]:
    kubectl = shutil.which("kubectl") or "/usr/bin/kubectl"
    if not Path(kubectl).exists():
        pytest.fail(
            "kubectl not found (PATH or /usr/bin/kubectl): it renders the kustomize overlays"
        )
    result = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@pytest.fixture(params=OVERLAYS)
def objects(request: pytest.FixtureRequest) -> tuple[Obj, ...]:
    return _render(request.param)


def _of_kind(objects: tuple[Obj, ...], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _main_container(deployment: Obj) -> Obj:
    containers: list[Obj] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, deployment["metadata"]["name"]
    return containers[0]


def _settings(objects: tuple[Obj, ...], deployment: Obj) -> dict[str, str]:
    """The container's environment: its ConfigMaps (envFrom) and literal env values."""
    container = _main_container(deployment)
    config_maps = _of_kind(objects, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def _prestop_seconds(container: Obj) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop.get("exec", {}).get("command", [])
    return float(command[1]) if command[:1] == ["sleep"] else 0.0


def test_schema_version_is_shipped() -> None:
    assert KUBERNETES_VERSION in kubernetes_validate.utils.all_versions()


def test_every_object_validates_strictly(objects: tuple[Obj, ...]) -> None:
    assert objects
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name} is invalid at {path}: {exc.message}")


def test_a_typo_fails_strict_validation() -> None:
    deployment = copy.deepcopy(_of_kind(_render("dev"), "Deployment")["retrieval"])
    container = _main_container(deployment)
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_the_four_services_are_deployed(objects: tuple[Obj, ...]) -> None:
    assert set(_of_kind(objects, "Deployment")) == DEPLOYMENTS


def test_pods_run_non_root_on_a_read_only_root(objects: tuple[Obj, ...]) -> None:
    for name, deployment in _of_kind(objects, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        assert pod.get("automountServiceAccountToken") is False, name
        tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
        mounts = {m["mountPath"]: m["name"] for m in _main_container(deployment)["volumeMounts"]}
        assert mounts.get("/tmp") in tmp_volumes, f"{name}: writable /tmp on an emptyDir"
        assert any(m.get("readOnly") for m in _main_container(deployment)["volumeMounts"]), name


def test_containers_have_requests_and_limits(objects: tuple[Obj, ...]) -> None:
    cpu_requests = {}
    for name, deployment in _of_kind(objects, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            resources = container["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= resources[kind].keys(), f"{name}: {kind}"
        cpu_requests[name] = _main_container(deployment)["resources"]["requests"]["cpu"]
    assert cpu_requests["retrieval"] == "2", "retrieval is the CPU-heavy service"


def test_grpc_services_have_native_grpc_probes(objects: tuple[Obj, ...]) -> None:
    deployments = _of_kind(objects, "Deployment")
    for name, prefix in GRPC_SERVICES.items():
        container = _main_container(deployments[name])
        port = int(_settings(objects, deployments[name])[f"GENSEARCH_{prefix}_PORT"])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port, f"{name}: {probe}"


def test_gateway_probes_readyz_and_healthz(objects: tuple[Obj, ...]) -> None:
    container = _main_container(_of_kind(objects, "Deployment")["gateway"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "startupProbe" in container


def test_termination_grace_outlasts_the_drain(objects: tuple[Obj, ...]) -> None:
    deployments = _of_kind(objects, "Deployment")
    for name, deployment in deployments.items():
        settings = _settings(objects, deployment)
        prefix = GRPC_SERVICES.get(name, "GATEWAY")
        key = f"GENSEARCH_{prefix}_GRACE_SECONDS"
        assert key in settings, f"{name}: set the drain explicitly"
        drain = float(settings[key])
        needed = drain + _prestop_seconds(_main_container(deployment))
        period = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert period > needed, f"{name}: {period} s does not outlast {needed} s"


def test_settings_come_from_config_maps(objects: tuple[Obj, ...]) -> None:
    config_maps = _of_kind(objects, "ConfigMap")
    for name, deployment in _of_kind(objects, "Deployment").items():
        sources = _main_container(deployment).get("envFrom", [])
        assert sources, name
        for source in sources:
            assert source["configMapRef"]["name"] in config_maps, name


def test_pods_carry_prometheus_scrape_annotations(objects: tuple[Obj, ...]) -> None:
    for name, deployment in _of_kind(objects, "Deployment").items():
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name
        assert annotations["prometheus.io/path"] == "/metrics", name
        settings = _settings(objects, deployment)
        prefix = GRPC_SERVICES.get(name)
        expected = settings[f"GENSEARCH_{prefix}_METRICS_PORT"] if prefix else "8000"
        assert annotations["prometheus.io/port"] == expected, name
        ports = {p["containerPort"] for p in _main_container(deployment)["ports"]}
        assert int(expected) in ports, name


def test_every_deployment_has_an_hpa_and_a_pdb(objects: tuple[Obj, ...]) -> None:
    hpas = _of_kind(objects, "HorizontalPodAutoscaler")
    pdbs = _of_kind(objects, "PodDisruptionBudget")
    for name, deployment in _of_kind(objects, "Deployment").items():
        assert "replicas" not in deployment["spec"], f"{name}: the HPA owns the replica count"
        targets = [h for h in hpas.values() if h["spec"]["scaleTargetRef"]["name"] == name]
        assert len(targets) == 1, f"{name}: one HPA"
        hpa = targets[0]
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"], name
        resources = [m["resource"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
        assert any(
            r["name"] == "cpu" and r["target"]["type"] == "Utilization" for r in resources
        ), f"{name}: scales on CPU utilisation"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [
            p
            for p in pdbs.values()
            if p["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(matching) == 1, f"{name}: one PodDisruptionBudget"


def test_services_have_named_ports_that_exist(objects: tuple[Obj, ...]) -> None:
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    for name, service in _of_kind(objects, "Service").items():
        selected = [
            w
            for w in workloads
            if service["spec"]["selector"].items()
            <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, f"service {name} selects one workload"
        container_ports = {
            p.get("name")
            for c in selected[0]["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        for port in service["spec"]["ports"]:
            assert port.get("name"), f"service {name}: unnamed port {port['port']}"
            assert port["targetPort"] in container_ports, f"service {name}: {port['targetPort']}"


def test_dev_runs_redis_as_a_statefulset() -> None:
    objects = _render("dev")
    redis = _of_kind(objects, "StatefulSet")["redis"]
    headless = _of_kind(objects, "Service")[redis["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    pod_names = {f"redis-{i}.{headless['metadata']['name']}" for i in range(3)}
    deployments = _of_kind(objects, "Deployment")
    for client, key in REDIS_CLIENTS.items():
        host = urlsplit(_settings(objects, deployments[client])[key]).hostname
        assert host in {headless["metadata"]["name"], *pod_names}, f"{client}: {host}"


def test_prod_uses_an_external_redis() -> None:
    objects = _render("prod")
    assert not _of_kind(objects, "StatefulSet"), "no in-cluster Redis in prod"
    services = _of_kind(objects, "Service")
    assert not any("redis" in name for name in services)
    deployments = _of_kind(objects, "Deployment")
    for client, key in REDIS_CLIENTS.items():
        host = urlsplit(_settings(objects, deployments[client])[key]).hostname or ""
        assert "." in host and host.split(".")[0] not in services, f"{client}: {host}"


def test_prod_gateway_reads_api_keys_from_a_secret() -> None:
    gateway = _main_container(_of_kind(_render("prod"), "Deployment")["gateway"])
    env = {e["name"]: e for e in gateway["env"]}
    secret = env["GENSEARCH_GATEWAY_API_KEY_SHA256"]["valueFrom"]["secretKeyRef"]
    assert secret == {"name": "gensearch-api-keys", "key": "sha256-list"}
