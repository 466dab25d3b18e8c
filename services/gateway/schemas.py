"""HTTP request/response models of the gateway's ``/v1`` API."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from services.common.limits import MAX_EXCLUDE
from services.common.text import MAX_QUERY_CHARS, normalize_query

ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,64}$"
MIN_TIMEOUT_MS = 50
ItemId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
UserId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Source = Literal["generated", "lexical", "dense", "ann", "popular"]


class SearchFilters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    category: str | None = Field(
        None,
        max_length=256,
        description="Category path prefix, levels joined by ' > ' "
        "(e.g. 'Industrial & Scientific > Lab & Scientific Products').",
    )
    exclude_ids: list[ItemId] = Field(
        default_factory=list, max_length=MAX_EXCLUDE, description="Item ids never to return."
    )
    exclude_history: bool = Field(
        False,
        description="Also leave out the items in the user's history (already bought). They "
        "are removed inside decoding, so k items still come back; with exclude_ids, at most "
        f"{MAX_EXCLUDE} ids in all (the most recent history items are kept).",
    )


class SearchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"query": "digital caliper", "user_id": "42", "k": 10},
                {"query": "", "user_id": "42", "k": 5, "filters": {"exclude_ids": ["17"]}},
            ]
        },
    )

    query: str = Field(
        "",
        max_length=4 * MAX_QUERY_CHARS,
        description="Search text; empty for a recommendation feed. NFKC-normalised, control "
        f"characters stripped, at most {MAX_QUERY_CHARS} characters after normalisation.",
    )
    user_id: UserId | None = Field(None, description="Unknown users are a cold start.")
    k: int = Field(10, ge=1, le=100, description="Number of items wanted.")
    filters: SearchFilters | None = None
    beam_width: int | None = Field(None, ge=1, le=128, description="Override the beam width.")
    timeout_ms: int | None = Field(
        None,
        ge=MIN_TIMEOUT_MS,
        le=10_000,
        description="Total deadline; default from the server config. At least "
        f"{MIN_TIMEOUT_MS} ms: one generative decode takes about 10 ms on the 2-core "
        "reference machine, so a shorter budget could only ever time out.",
    )
    debug: bool = Field(False, description="Include per-stage timings.")

    @field_validator("query")
    @classmethod
    def _normalise(cls, value: str) -> str:
        text = normalize_query(value)
        if len(text) > MAX_QUERY_CHARS:
            raise ValueError(
                f"query is {len(text)} characters after normalisation; at most {MAX_QUERY_CHARS}"
            )
        return text


class SearchItem(BaseModel):
    id: str
    title: str | None = None
    category: str | None = None
    score: float = Field(description="Final score (ranked) or retrieval score; higher is better.")
    sid: list[int] = Field(default_factory=list, description="Semantic ID codes, coarse to fine.")
    source: Source = Field(description="The source that ranked this item highest.")
    sources: list[Source] = Field(
        default_factory=list,
        description="Every candidate source that found this item (hybrid retrieval fuses "
        "the generator, BM25 and dense search; 'ann' fills short lists; 'popular' is the "
        "fallback feed when retrieval is down).",
    )
    objective_scores: dict[str, float] | None = None


class SearchResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "request_id": "5f2c0a",
                    "query": "digital caliper",
                    "items": [
                        {
                            "id": "812",
                            "title": "iGaging digital caliper",
                            "score": -0.42,
                            "sid": [12, 40, 7],
                            "source": "generated",
                            "sources": ["generated", "lexical"],
                        }
                    ],
                    "artifact_version": "20261126-160000-ab12cd34",
                    "degraded": [],
                    "cached": False,
                }
            ]
        }
    )

    request_id: str
    query: str
    corrected_query: str | None = Field(
        None,
        description="The spelling-corrected query the results are for, when query "
        "understanding changed it.",
    )
    category_intent: str | None = Field(
        None, description="The most likely category path of the query (query understanding)."
    )
    items: list[SearchItem]
    ranking_weights: dict[str, float] | None = Field(
        None,
        description="The personalised (GRADE) objective weights that ordered the items, "
        "when the ranking stage ran.",
    )
    artifact_version: str
    degraded: list[str] = Field(
        default_factory=list, description="Stages that answered with reduced quality."
    )
    notes: list[str] = Field(default_factory=list, description="Why stages degraded.")
    cached: bool = False
    timings_ms: dict[str, float] | None = None


class ItemResponse(BaseModel):
    id: str
    title: str | None = None
    brand: str | None = None
    category: str | None = None
    artifact_version: str


class ErrorResponse(BaseModel):
    detail: str
