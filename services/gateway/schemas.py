"""HTTP request/response models of the gateway's ``/v1`` API."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from services.common.limits import MAX_EXCLUDE
from services.common.text import MAX_QUERY_CHARS, normalize_query

ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,64}$"
MIN_TIMEOUT_MS = 50
RAG_MIN_TIMEOUT_MS = 200
ItemId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
UserId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Source = Literal["generated", "lexical", "dense", "ann", "popular"]


def normalized_query(value: str) -> str:
    """The query in its normal form; ValueError when that is longer than a query may be."""
    text = normalize_query(value)
    if len(text) > MAX_QUERY_CHARS:
        raise ValueError(
            f"query is {len(text)} characters after normalisation; at most {MAX_QUERY_CHARS}"
        )
    return text


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
        return normalized_query(value)


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


RagTimeoutMs = Annotated[
    int | None,
    Field(
        ge=RAG_MIN_TIMEOUT_MS,
        le=10_000,
        description=f"Total deadline; at least {RAG_MIN_TIMEOUT_MS} ms (a cross-encoder pass "
        "over 20 documents takes tens to hundreds of ms on the 2-core reference machine); "
        "default from the server config.",
    ),
]


RagMinScore = Annotated[
    float | None,
    Field(
        ge=-1000.0,
        le=1000.0,
        allow_inf_nan=False,
        description="Override the artifact's calibrated threshold (a reranker logit; finite).",
    ),
]


class RagTextDocument(BaseModel):
    """A document given as text."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, max_length=128, description="Your id, echoed back.")
    text: str = Field(..., min_length=1, max_length=4000)


class RagItemDocument(BaseModel):
    """A catalog item, resolved to its passages (a spec passage and up to two description
    passages), each scored as a document."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, max_length=128, description="Your id, echoed back.")
    item_id: ItemId


RagDocument = RagTextDocument | RagItemDocument


class RagRerankRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "query": "Which brand makes the 6 inch digital caliper?",
                    "documents": [
                        {"id": "a", "text": "Digital Caliper 0-6 inch. Brand: Neiko."},
                        {"item_id": "965"},
                    ],
                    "max_documents": 3,
                }
            ]
        },
    )

    query: str = Field(..., min_length=1, max_length=512, description="The question.")
    documents: list[RagDocument] = Field(..., min_length=1, max_length=100)
    max_documents: int = Field(3, ge=1, le=20, description="Select at most this many (best first).")
    min_score: RagMinScore = None
    timeout_ms: RagTimeoutMs = None


class RagScoredDocument(BaseModel):
    id: str
    item_id: str | None = None
    text: str
    score: float = Field(description="Predicted information gain (a logit; higher helps more).")
    selected: bool
    truncated: bool = Field(description="Cut to the model's maximum length before scoring.")


class RagRerankResponse(BaseModel):
    request_id: str
    documents: list[RagScoredDocument] = Field(description="Every document, best first.")
    none_selected: bool = Field(description="No document is expected to help: answer without.")
    threshold: float
    variant: str
    max_tokens: int
    artifact_version: str


class RagContextRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"query": "which brand makes nitrile exam gloves", "user_id": "42"}]
        },
    )

    query: str = Field(
        ...,
        min_length=1,
        max_length=MAX_QUERY_CHARS,
        description="The shopper's question; searched with, so a search query's limits apply.",
    )
    user_id: UserId | None = None
    items: int = Field(5, ge=1, le=20, description="Top search results whose passages compete.")
    max_documents: int = Field(3, ge=1, le=20)
    min_score: RagMinScore = None
    timeout_ms: RagTimeoutMs = None

    @field_validator("query")
    @classmethod
    def _searchable(cls, value: str) -> str:
        normalized_query(value)  # the search it runs must accept it
        return value


class RagContextDocument(BaseModel):
    id: str
    item_id: str
    text: str
    score: float | None = Field(None, description="Reranker score; absent when degraded.")


class RagContextResponse(BaseModel):
    request_id: str
    query: str
    documents: list[RagContextDocument] = Field(
        description="The documents to hand the LLM, best first; empty when none helps."
    )
    context: str = Field(description="The documents joined, ready for a prompt ('' if none).")
    searched_item_ids: list[str]
    none_selected: bool
    threshold: float | None = None
    artifact_version: str
    degraded: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
