"""Gateway settings (env prefix ``GENSEARCH_GATEWAY_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.config import artifact_root
from services.gateway.schemas import MIN_TIMEOUT_MS


class GatewaySettings(BaseSettings):
    """Where the downstream services are and how the gateway protects itself."""

    model_config = SettingsConfigDict(env_prefix="GENSEARCH_GATEWAY_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    grace_seconds: float = Field(
        5.0, ge=0, le=120, description="on SIGTERM: time to finish in-flight requests"
    )
    # Required: the one stage without which no search can be answered.
    retrieval_addr: str = Field(..., description="host:port of the retrieval service")
    query_understanding_addr: str = Field("", description="optional; empty disables the stage")
    ranking_addr: str = Field("", description="optional; empty disables the stage")
    rag_rerank_addr: str = Field("", description="optional; empty disables the stage")
    # Empty: in-process store, filled from the artifact at start (the embedded default).
    redis_url: str = ""
    redis_socket_timeout: float = Field(0.05, gt=0)
    redis_connect_timeout: float = Field(0.2, gt=0)
    redis_key_prefix: str = "gs"
    redis_max_connections: int = Field(64, ge=1)
    artifact_dir: Path = Field(default_factory=artifact_root)
    artifact_version: str = ""
    # Total budget of one search; each stage gets a share of what remains.
    request_timeout_ms: int = Field(200, ge=MIN_TIMEOUT_MS, le=10_000)
    rag_request_timeout_ms: int = Field(
        1500,
        ge=MIN_TIMEOUT_MS,
        le=30_000,
        description="default deadline of /v1/rag/* (a search plus a cross-encoder pass)",
    )
    result_cache_ttl_seconds: int = Field(30, ge=0)
    qu_cache_ttl_seconds: int = Field(3600, ge=0)
    default_k: int = Field(10, ge=1, le=100)
    breaker_failures: int = Field(5, ge=1, description="consecutive failures that open a breaker")
    breaker_reset_seconds: float = Field(5.0, gt=0)
    # Access control: sha256 hex digests of accepted API keys; empty turns auth off.
    api_key_sha256: list[str] = Field(default_factory=list)
    rate_limit_per_second: float = Field(0.0, ge=0, description="per API key; 0 disables")
    rate_limit_burst: int = Field(20, ge=1)
    log_level: str = "INFO"
