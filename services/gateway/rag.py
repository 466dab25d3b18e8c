"""The gateway's RAG endpoints: rerank documents for a question, and build the context to
hand an LLM (search → the top items' passages → rerank → the documents worth reading,
possibly none)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from services.common.deadline import Deadline
from services.common.generated.gensearch.common.v1 import common_pb2
from services.common.generated.gensearch.rag_rerank.v1 import rag_rerank_pb2
from services.common.text import normalize_query
from services.gateway.config import GatewaySettings
from services.gateway.downstream import Downstream, StageFailedError
from services.gateway.schemas import (
    MIN_TIMEOUT_MS,
    RagContextRequest,
    RagRerankRequest,
    RagTextDocument,
    SearchRequest,
)
from services.gateway.search import SearchService
from services.rag_rerank.passages import item_passages
from services.retrieval.catalog import CATEGORY_SEP

Answer = dict[str, Any]


class RagUnavailableError(Exception):
    """Nothing can be answered (HTTP ``status``)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class RagService:
    """Orchestrates the RAG endpoints over the search service and the rag_rerank stage."""

    def __init__(
        self, settings: GatewaySettings, search: SearchService, rerank: Downstream | None
    ) -> None:
        self.settings = settings
        self.search = search
        self.rerank_stage = rerank

    def _deadline(self, timeout_ms: int | None) -> Deadline:
        return Deadline.after((timeout_ms or self.settings.rag_request_timeout_ms) / 1000.0)

    async def _call(
        self,
        query: str,
        documents: list[rag_rerank_pb2.Document],
        max_documents: int,
        min_score: float | None,
        deadline: Deadline,
    ) -> rag_rerank_pb2.RerankResponse:
        assert self.rerank_stage is not None
        request = rag_rerank_pb2.RerankRequest(
            meta=common_pb2.RequestMeta(artifact_version=self.search.version),
            query=query,
            documents=documents,
            max_documents=max_documents,
        )
        if min_score is not None:
            request.min_score = min_score
        reply: rag_rerank_pb2.RerankResponse = await self.rerank_stage.call(
            "Rerank", request, deadline
        )
        return reply

    async def rerank(self, body: RagRerankRequest, request_id: str) -> Answer:
        """Scores for every document and the selection; 422 for documents the reranker
        refuses, 503 without the stage (there is no lesser answer to give)."""
        if self.rerank_stage is None:
            raise RagUnavailableError(503, "the rag_rerank stage is not configured")
        docs = [
            rag_rerank_pb2.Document(doc_id=d.id or "", text=d.text)
            if isinstance(d, RagTextDocument)
            else rag_rerank_pb2.Document(doc_id=d.id or "", item_id=d.item_id)
            for d in body.documents
        ]
        try:
            reply = await self._call(
                body.query,
                docs,
                body.max_documents,
                body.min_score,
                self._deadline(body.timeout_ms),
            )
        except StageFailedError as exc:
            if exc.not_found:  # an unknown item id
                raise RagUnavailableError(404, exc.reason) from exc
            if exc.invalid:  # refused as asked, like a search's 400
                raise RagUnavailableError(400, exc.reason) from exc
            status = 504 if exc.timeout else 503
            raise RagUnavailableError(status, f"{exc.stage}: {exc.reason}") from exc
        return {
            "request_id": request_id,
            "documents": [
                {
                    "id": d.doc_id,
                    "item_id": d.item_id or None,
                    "text": d.text,
                    "score": d.score,
                    "selected": d.selected,
                    "truncated": d.truncated,
                }
                for d in reply.documents
            ],
            "none_selected": reply.none_selected,
            "threshold": reply.threshold,
            "variant": reply.variant,
            "max_tokens": reply.max_tokens,
            "artifact_version": reply.artifact_version,
        }

    async def context(self, body: RagContextRequest, request_id: str) -> Answer:
        """Search, then rerank the top items' passages. Without the reranker the answer
        degrades to the top items' spec passages in search order."""
        deadline = self._deadline(body.timeout_ms)
        if not normalize_query(body.query):  # e.g. only punctuation: nothing to search for
            return {
                "request_id": request_id,
                "query": body.query,
                "searched_item_ids": [],
                "artifact_version": self.search.version,
                "documents": [],
                "context": "",
                "none_selected": True,
                "degraded": [],
                "notes": ["the question has no searchable words: no documents"],
            }
        try:
            search = SearchRequest.model_validate(
                {
                    "query": body.query,
                    "user_id": body.user_id,
                    "k": body.items,
                    "timeout_ms": max(MIN_TIMEOUT_MS, int(deadline.remaining() * 1000 * 0.6)),
                }
            )
        except ValidationError as exc:  # e.g. longer than a search query may be
            reason = "; ".join(str(e["msg"]) for e in exc.errors())
            raise RagUnavailableError(400, f"query: {reason}") from exc
        found = await self.search.search(search, request_id)
        item_ids = [str(it["id"]) for it in found["items"]]
        degraded: list[str] = list(found.get("degraded", []))
        notes: list[str] = list(found.get("notes", []))
        answer: Answer = {
            "request_id": request_id,
            "query": body.query,
            "searched_item_ids": item_ids,
            "artifact_version": found.get("artifact_version", self.search.version),
        }
        reply = None
        if item_ids and self.rerank_stage is not None:
            try:
                reply = await self._call(
                    body.query,
                    [rag_rerank_pb2.Document(item_id=i) for i in item_ids],
                    body.max_documents,
                    body.min_score,
                    deadline,
                )
            except StageFailedError as exc:
                degraded.append("rag_rerank")
                notes.append(f"rag_rerank: {exc.reason}; the top items' specs, unranked")
        elif item_ids:
            degraded.append("rag_rerank")
            notes.append("rag_rerank: not configured; the top items' specs, unranked")
        if reply is not None:
            docs = [
                {"id": d.doc_id, "item_id": d.item_id, "text": d.text, "score": d.score}
                for d in reply.documents
                if d.selected
            ]
            answer["threshold"] = reply.threshold
        else:
            docs = await self._fallback(item_ids[: body.max_documents])
        answer.update(
            {
                "documents": docs,
                "context": "\n\n".join(str(d["text"]) for d in docs),
                "none_selected": not docs,
                "degraded": degraded,
                "notes": notes,
            }
        )
        return answer

    async def _fallback(self, item_ids: list[str]) -> list[Answer]:
        """Spec passages of ``item_ids`` from the feature store's item fields."""
        items = await self.search.store.items(self.search.version, item_ids)
        out = []
        for i in item_ids:
            f = items.get(i)
            if f is None:
                continue
            path = (f.get("category") or "").split(CATEGORY_SEP)
            spec = item_passages(i, f.get("title") or "", f.get("brand") or "", "", path)[0]
            out.append({"id": spec.passage_id, "item_id": i, "text": spec.text})
        return out
