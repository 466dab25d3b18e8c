"""The reranker core, testable without gRPC: validate a request, resolve item ids to
passages, score with the cross-encoder, select by the threshold."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.common.errors import InvalidInputError, NotFoundError, VersionMismatchError
from services.common.generated.gensearch.rag_rerank.v1 import rag_rerank_pb2
from services.rag_rerank import metrics
from services.rag_rerank.config import RagRerankSettings
from services.rag_rerank.model import CrossEncoder, select
from services.rag_rerank.passages import Passage


@dataclass(frozen=True, slots=True)
class RerankConfig:
    """What the artifact says about serving the reranker (``rag/reranker.json``)."""

    threshold: float
    max_length: int
    default_variant: str


@dataclass(frozen=True, slots=True)
class _Doc:
    doc_id: str
    text: str
    item_id: str


class Reranker:
    """One artifact version's reranker with its catalog passages."""

    def __init__(
        self,
        settings: RagRerankSettings,
        version: str,
        encoder: CrossEncoder,
        config: RerankConfig,
        variant: str,
        passages: Mapping[str, Sequence[Passage]],
        manifest_sha256: str = "",
    ) -> None:
        self.settings = settings
        self.version = version
        self.encoder = encoder
        self.config = config
        self.variant = variant
        self.passages = passages
        self.manifest_sha256 = manifest_sha256

    def _documents(self, request: rag_rerank_pb2.RerankRequest) -> list[_Doc]:
        s = self.settings
        if not request.documents:
            raise InvalidInputError("documents: at least one document (text or item_id)")
        docs: list[_Doc] = []
        for n, d in enumerate(request.documents):
            if d.item_id and d.text:
                raise InvalidInputError(f"documents[{n}]: give text or item_id, not both")
            if d.item_id:
                found = self.passages.get(d.item_id)
                if found is None:
                    raise NotFoundError(f"documents[{n}]: unknown item_id {d.item_id!r}")
                docs.extend(_Doc(d.doc_id or p.passage_id, p.text, d.item_id) for p in found)
            elif d.text:  # whitespace alone is a (useless) document, not an error
                if len(d.text) > s.max_document_chars:
                    raise InvalidInputError(
                        f"documents[{n}]: {len(d.text)} characters, more than the "
                        f"{s.max_document_chars} allowed"
                    )
                docs.append(_Doc(d.doc_id or f"doc-{n}", d.text, ""))
            else:
                raise InvalidInputError(f"documents[{n}]: empty (needs text or item_id)")
            if len(docs) > s.max_documents:
                raise InvalidInputError(
                    f"more than {s.max_documents} documents (item ids count once per passage)"
                )
        return docs

    def rerank(self, request: rag_rerank_pb2.RerankRequest) -> rag_rerank_pb2.RerankResponse:
        """Score every document; select the best ``max_documents`` at or above the threshold."""
        pinned = request.meta.artifact_version
        if pinned and pinned != self.version:
            raise VersionMismatchError(
                f"request pinned to artifact {pinned}, this service serves {self.version}"
            )
        query = request.query.strip()
        if not query:
            raise InvalidInputError("query: required")
        if len(query) > self.settings.max_query_chars:
            raise InvalidInputError(
                f"query: {len(query)} characters, more than {self.settings.max_query_chars}"
            )
        if request.max_documents < 0:
            raise InvalidInputError("max_documents must be >= 0")
        docs = self._documents(request)
        threshold = (
            float(request.min_score) if request.HasField("min_score") else self.config.threshold
        )
        if not math.isfinite(threshold):
            raise InvalidInputError("min_score must be a finite number")
        top_k = request.max_documents or self.settings.default_selected
        t0 = time.perf_counter()
        scored = self.encoder.score(query, [d.text for d in docs])
        metrics.SCORE_SECONDS.observe(time.perf_counter() - t0)
        chosen = set(select(scored.scores, threshold, top_k))
        order = sorted(range(len(docs)), key=lambda i: -float(scored.scores[i]))
        metrics.DOCUMENTS.observe(len(docs))
        metrics.SELECTED.observe(len(chosen))
        metrics.TRUNCATED.inc(sum(scored.truncated))
        return rag_rerank_pb2.RerankResponse(
            documents=[
                rag_rerank_pb2.ScoredDocument(
                    doc_id=docs[i].doc_id,
                    score=float(scored.scores[i]),
                    selected=i in chosen,
                    text=docs[i].text,
                    item_id=docs[i].item_id,
                    truncated=scored.truncated[i],
                    tokens=scored.tokens[i],
                )
                for i in order
            ],
            none_selected=not chosen,
            threshold=threshold,
            artifact_version=self.version,
            variant=self.variant,
            max_tokens=self.config.max_length,
        )
