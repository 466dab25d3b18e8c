"""Query-understanding service settings (env prefix ``GENSEARCH_QU_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.config import ServiceSettings


class QueryUnderstandingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GENSEARCH_QU_", extra="ignore", frozen=True)

    default_top_categories: int = Field(5, ge=1, le=50)
    # Queries are short: 32 word pieces hold every WANDS query; a longer one is cut there,
    # which bounds the encoder's time (about 3 ms for a short query on one core).
    encoder_max_tokens: int = Field(32, ge=8, le=128)
    # The intended category becomes a keyword only when the intent head is this sure.
    keyword_min_probability: float = Field(0.5, ge=0, le=1)
    max_keywords: int = Field(8, ge=0, le=32)
    spelling: bool = Field(True, description="correct misspelt words against the catalog")
