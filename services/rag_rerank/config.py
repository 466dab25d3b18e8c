"""RAG rerank service settings (env prefix ``GENSEARCH_RAG_RERANK_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.config import ServiceSettings


class RagRerankSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="GENSEARCH_RAG_RERANK_", extra="ignore", frozen=True
    )

    variant: str = Field(
        "", description="reranker variant: fp32 or int8; empty: the artifact's default"
    )
    max_documents: int = Field(
        100,
        ge=1,
        le=500,
        description="documents per request, after item ids are resolved to passages",
    )
    max_document_chars: int = Field(4000, ge=64, le=100_000)
    max_query_chars: int = Field(512, ge=16, le=4096)
    default_selected: int = Field(3, ge=1, le=50, description="max_documents=0 selects this many")
    batch_size: int = Field(32, ge=1, le=256, description="pairs per ONNX run")
