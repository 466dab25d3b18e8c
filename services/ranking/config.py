"""Ranking service settings (env prefix ``GENSEARCH_RANKING_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.config import ServiceSettings


class RankingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GENSEARCH_RANKING_", extra="ignore", frozen=True)

    redis_url: str = Field(
        "",
        description="features materialised by the gateway's materialise command; empty: "
        "computed in process from the artifact (the embedded default)",
    )
    redis_prefix: str = Field("gs", description="the key prefix materialise wrote with")
    redis_timeout_seconds: float = Field(0.05, gt=0, le=5)
    max_candidates: int = Field(500, ge=1, le=2000)
    exploration_rate: float = Field(
        0.0, ge=0, le=1, description="share of requests served a Dirichlet-sampled weight vector"
    )
    weight_log_path: str = Field(
        "", description="JSON-lines file of served weight vectors; empty: the service log"
    )
    encoder_max_tokens: int = Field(32, ge=8, le=128)
