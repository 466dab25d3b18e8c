"""Deployment files stay in step with the code: YAML parses, env names and metric names exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import services.gateway.metrics  # registers the gateway metrics
import services.query_understanding.metrics
import services.rag_rerank.metrics
import services.ranking.metrics
import services.retrieval.metrics  # noqa: F401
from services.common.config import ServiceSettings
from services.gateway.config import GatewaySettings
from services.query_understanding.config import QueryUnderstandingSettings
from services.rag_rerank.config import RagRerankSettings
from services.ranking.config import RankingSettings
from services.retrieval.config import RetrievalSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_FILES = [ROOT / "docker-compose.yml", *sorted((ROOT / "deploy").rglob("*.y*ml"))]
SETTINGS = {
    "GENSEARCH_GATEWAY_": GatewaySettings,
    "GENSEARCH_RETRIEVAL_": RetrievalSettings,
    "GENSEARCH_QU_": QueryUnderstandingSettings,
    "GENSEARCH_RANKING_": RankingSettings,
    "GENSEARCH_RAG_RERANK_": RagRerankSettings,
}


def _env_names(text: str) -> set[str]:
    return set(re.findall(r"\b(GENSEARCH_[A-Z_]+)\b", text))


def test_every_yaml_file_parses() -> None:
    assert len(DEPLOY_FILES) >= 10
    for path in DEPLOY_FILES:
        docs = list(yaml.safe_load_all(path.read_text()))
        assert docs and all(d is not None for d in docs), path


def test_env_variables_name_real_settings() -> None:
    for path in [*DEPLOY_FILES, ROOT / "deploy" / "docker" / "Dockerfile"]:
        for name in _env_names(path.read_text()):
            if name in ("GENSEARCH_ARTIFACT_DIR", "GENSEARCH_DATA_DIR"):
                continue
            prefix = next((p for p in SETTINGS if name.startswith(p)), None)
            assert prefix is not None, f"{path.name}: {name} belongs to no settings class"
            field = name[len(prefix) :].lower()
            assert field in SETTINGS[prefix].model_fields, f"{path.name}: {name} is not a setting"
    assert issubclass(RetrievalSettings, ServiceSettings)


def test_dashboards_and_rules_use_existing_metrics() -> None:
    known = set()
    for metric in REGISTRY.collect():
        known.add(metric.name)
        if metric.type == "counter":
            known.add(metric.name + "_total")
        known.update(sample.name for sample in metric.samples)
    text = (ROOT / "deploy" / "prometheus" / "rules.yml").read_text()
    text += json.dumps(json.loads((ROOT / "deploy/grafana/dashboards/gensearch.json").read_text()))
    used = set(re.findall(r"\b(gensearch_[a-z_]+)\b", text))
    assert used, "rules/dashboards reference metrics"
    missing = {m for m in used if m not in known and m.removesuffix("_bucket") not in known}
    assert not missing, f"unknown metrics: {sorted(missing)}"
