"""The search orchestration: caches, stage budgets, concurrency and degradation."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.common.deadline import Deadline
from services.common.generated.gensearch.common.v1 import common_pb2
from services.common.generated.gensearch.query_understanding.v1 import query_understanding_pb2
from services.common.generated.gensearch.ranking.v1 import ranking_pb2
from services.common.generated.gensearch.retrieval.v1 import retrieval_pb2
from services.common.limits import MAX_EXCLUDE, RANK_POOL
from services.gateway.config import GatewaySettings
from services.gateway.downstream import Downstream, StageFailedError
from services.gateway.metrics import DEGRADED, cache_lookups, stage_latency
from services.gateway.schemas import SearchRequest
from services.gateway.store import FeatureStore

_SOURCES = {
    common_pb2.CANDIDATE_SOURCE_GENERATED: "generated",
    common_pb2.CANDIDATE_SOURCE_LEXICAL: "lexical",
    common_pb2.CANDIDATE_SOURCE_DENSE: "dense",
    common_pb2.CANDIDATE_SOURCE_ANN: "ann",
}
# Kept back from the budget for assembling the answer after the last stage.
ASSEMBLY_RESERVE_S = 0.003


class SearchUnavailableError(Exception):
    """No answer can be given; ``status`` is the HTTP status to return."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class SearchRejectedError(Exception):
    """Retrieval refused the request as asked (e.g. a query to a catalog without item
    text): a client error, answered with ``status`` 400 and ``reason``."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _StageTimer:
    """``with trace.stage(name):`` records the stage's wall time (a plain class: cheaper
    than a generator-based context manager on the per-request path)."""

    __slots__ = ("_name", "_start", "_timings")

    def __init__(self, timings: dict[str, float], name: str) -> None:
        self._timings, self._name, self._start = timings, name, 0.0

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *_exc: object) -> None:
        took = time.perf_counter() - self._start
        self._timings[self._name] = round(took * 1000, 3)
        stage_latency(self._name).observe(took)


@dataclass(slots=True)
class _Trace:
    timings: dict[str, float] = field(default_factory=dict)
    degraded: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def stage(self, name: str) -> _StageTimer:
        return _StageTimer(self.timings, name)

    def degrade(self, stage: str, reason: str) -> None:
        self.degraded.append(stage)
        self.notes.append(f"{stage}: {reason}")
        DEGRADED.labels(stage).inc()


# The JSON document of one answer (schema: ``schemas.SearchResponse``).
Answer = dict[str, Any]


def _item(c: common_pb2.Candidate, features: dict[str, Any] | None) -> dict[str, Any]:
    """One answer item (schema: ``schemas.SearchItem``); absent optional fields are left out."""
    item: dict[str, Any] = {
        "id": c.item_id,
        "score": round(float(c.final_score or c.retrieval_score), 6),
        "sid": list(c.sid.codes),
        "source": _SOURCES.get(c.source, "popular"),
        "sources": [_SOURCES.get(s, "popular") for s in c.sources]
        or [_SOURCES.get(c.source, "popular")],
    }
    if features:
        title, category = features.get("title"), features.get("category")
        if title is not None:
            item["title"] = title
        if category is not None:
            item["category"] = category
    if c.objective_scores:
        item["objective_scores"] = {o.objective: o.score for o in c.objective_scores}
    return item


def _understood(
    query: str, understanding: query_understanding_pb2.UnderstandResponse | None
) -> dict[str, str]:
    """The answer's ``corrected_query`` (when it differs) and ``category_intent`` fields."""
    if understanding is None:
        return {}
    out = {}
    if understanding.corrected_query and understanding.corrected_query != query:
        out["corrected_query"] = understanding.corrected_query
    if understanding.categories:
        out["category_intent"] = understanding.categories[0].category
    return out


def _digest(*parts: Any) -> str:
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()[:32]


def excluded_ids(req: SearchRequest, history: list[str]) -> list[str]:
    """The request's ``exclude_ids``, then (``exclude_history``) the user's history items,
    most recent first, deduplicated, at most :data:`MAX_EXCLUDE` in all."""
    if req.filters is None:
        return []
    ids = dict.fromkeys(req.filters.exclude_ids)
    if req.filters.exclude_history:
        for item in reversed(history):
            if len(ids) >= MAX_EXCLUDE:
                break
            ids.setdefault(item)
    return list(ids)


class SearchService:
    """Runs one search across the configured stages."""

    def __init__(
        self,
        settings: GatewaySettings,
        store: FeatureStore,
        retrieval: Downstream,
        query_understanding: Downstream | None = None,
        ranking: Downstream | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.retrieval = retrieval
        self.qu = query_understanding
        self.ranking = ranking
        self.version = ""

    async def refresh_version(self) -> str:
        """Ask retrieval which artifact version it serves (features are keyed by it)."""
        info = await self.retrieval.call(
            "GetInfo", retrieval_pb2.GetInfoRequest(), Deadline.after(1.0)
        )
        self.version = str(info.version)
        return self.version

    def cache_key(self, req: SearchRequest) -> str:
        filters = req.filters.model_dump() if req.filters else None
        return "res:" + _digest(
            self.version, req.query, req.user_id, req.k, filters, req.beam_width
        )

    async def search(self, req: SearchRequest, request_id: str) -> Answer:
        """Answer ``req``; raise :class:`SearchUnavailableError` only when nothing can be given,
        :class:`SearchRejectedError` when retrieval refuses the request as asked.

        The answer is the JSON document of :class:`~services.gateway.schemas.SearchResponse`
        as plain dicts: every field comes from validated input or typed protobufs, and
        building pydantic models for 10-100 items cost more than the rest of the gateway's
        own work on a search (about 15 µs per ``model_construct``)."""
        timeout_ms = req.timeout_ms or self.settings.request_timeout_ms
        deadline = Deadline.after(timeout_ms / 1000.0)
        trace = _Trace()
        key = self.cache_key(req)
        with trace.stage("result_cache"):
            cached = await self.store.cache_get(key)
        if cached is not None:
            cache_lookups("result", "hit").inc()
            answer: Answer = orjson.loads(cached)
            answer["request_id"], answer["cached"] = request_id, True
            if req.debug:
                answer["timings_ms"] = trace.timings
            return answer
        cache_lookups("result", "miss").inc()

        if self.qu is not None and req.query:
            understanding, history = await asyncio.gather(
                self._understand(req.query, deadline, trace), self._history(req.user_id, trace)
            )
        else:  # nothing to overlap: skip the two tasks gather would create
            understanding, history = None, await self._history(req.user_id, trace)
        candidates = await self._retrieve(req, understanding, history, deadline, trace)
        items = await self._features([c.item_id for c in candidates], trace)
        weights: dict[str, float] | None = None
        # the ranker is trained on search lists: feeds (no query) keep the retrieval order
        if self.ranking is not None and candidates and req.query:
            candidates, weights = await self._rank(
                req, request_id, understanding, history, candidates, deadline, trace
            )
        answer = {
            "request_id": request_id,
            "query": req.query,
            **_understood(req.query, understanding),
            "items": [_item(c, items.get(c.item_id)) for c in candidates[: req.k]],
            **({"ranking_weights": weights} if weights else {}),
            "artifact_version": self.version,
            "degraded": trace.degraded,
            "notes": trace.notes,
            "cached": False,
        }
        if not trace.degraded:
            await self.store.cache_set(
                key, orjson.dumps(answer), self.settings.result_cache_ttl_seconds
            )
        if req.debug:
            answer["timings_ms"] = trace.timings
        return answer

    async def _understand(
        self, query: str, deadline: Deadline, trace: _Trace
    ) -> query_understanding_pb2.UnderstandResponse | None:
        if self.qu is None or not query:
            return None
        key = "qu:" + _digest(self.version, query)
        with trace.stage("query_understanding"):
            raw = await self.store.cache_get(key)
            if raw is not None:
                cache_lookups("query_understanding", "hit").inc()
                return query_understanding_pb2.UnderstandResponse.FromString(raw)
            cache_lookups("query_understanding", "miss").inc()
            request = query_understanding_pb2.UnderstandRequest(
                meta=common_pb2.RequestMeta(artifact_version=self.version),
                query=query,
                want_embedding=True,
            )
            try:
                reply = await self.qu.call("Understand", request, deadline.sub_budget(0.25))
            except StageFailedError as exc:
                if exc.invalid:  # e.g. binary text: the query itself is unusable
                    raise SearchRejectedError(exc.reason) from exc
                trace.degrade("query_understanding", exc.reason)
                return None
        await self.store.cache_set(
            key, reply.SerializeToString(), self.settings.qu_cache_ttl_seconds
        )
        return reply

    async def _history(self, user_id: str | None, trace: _Trace) -> list[str]:
        if not user_id:
            return []
        with trace.stage("user_features"):
            history = await self.store.user_history(self.version, user_id)
        cache_lookups("user_features", "hit" if history is not None else "miss").inc()
        return history or []  # an unknown user is a cold start

    async def _retrieve(
        self,
        req: SearchRequest,
        understanding: query_understanding_pb2.UnderstandResponse | None,
        history: list[str],
        deadline: Deadline,
        trace: _Trace,
    ) -> list[common_pb2.Candidate]:
        filters = req.filters
        excluded = excluded_ids(req, history)
        ranked = self.ranking is not None and bool(req.query)
        want = max(req.k, RANK_POOL) if ranked else req.k
        request = retrieval_pb2.RetrieveRequest(
            meta=common_pb2.RequestMeta(artifact_version=self.version, debug=req.debug),
            query=understanding.corrected_query if understanding else req.query,
            keywords=list(understanding.keywords) if understanding else [],
            user=common_pb2.UserContext(user_id=req.user_id or "", recent_item_ids=history),
            k=want,
            beam_width=req.beam_width or 0,
            exclude_item_ids=excluded,
            category_prefixes=[filters.category] if filters and filters.category else [],
            query_embedding=list(understanding.embedding) if understanding else [],
        )
        reserve = 0.3 if ranked else 0.0
        budget = deadline.sub_budget(1.0 - reserve, reserve=ASSEMBLY_RESERVE_S)
        with trace.stage("retrieval"):
            try:
                reply = await self.retrieval.call("Retrieve", request, budget)
            except StageFailedError as exc:
                if exc.invalid:
                    raise SearchRejectedError(exc.reason) from exc
                return await self._fallback(req, excluded, exc, trace)
        for d in reply.degraded:
            trace.degrade(d.stage, d.reason)
        return list(reply.candidates)

    async def _fallback(
        self, req: SearchRequest, excluded: list[str], exc: StageFailedError, trace: _Trace
    ) -> list[common_pb2.Candidate]:
        """Without retrieval only a feed can be answered: popular items for an empty query."""
        if req.query:
            status = 504 if exc.timeout else 503
            raise SearchUnavailableError(status, f"retrieval unavailable ({exc.reason})")
        popular = await self.store.popular(self.version) or []
        if req.filters and req.filters.category:
            raise SearchUnavailableError(503, f"retrieval unavailable ({exc.reason})")
        trace.degrade("retrieval", f"{exc.reason}; popular items served")
        skip = set(excluded)
        picks = [i for i in popular if i not in skip][: req.k]
        if not picks:
            raise SearchUnavailableError(503, f"retrieval unavailable ({exc.reason})")
        return [
            common_pb2.Candidate(item_id=i, retrieval_score=float(-rank))
            for rank, i in enumerate(picks)
        ]

    async def _features(self, item_ids: list[str], trace: _Trace) -> dict[str, dict[str, Any]]:
        with trace.stage("item_features"):
            found = await self.store.items(self.version, item_ids)
        if item_ids:
            cache_lookups("item_features", "hit" if found else "miss").inc()
        return found

    async def _rank(
        self,
        req: SearchRequest,
        request_id: str,
        understanding: query_understanding_pb2.UnderstandResponse | None,
        history: list[str],
        candidates: list[common_pb2.Candidate],
        deadline: Deadline,
        trace: _Trace,
    ) -> tuple[list[common_pb2.Candidate], dict[str, float] | None]:
        """The ranked candidates and the GRADE weights used; the retrieval order (and no
        weights) when ranking fails."""
        assert self.ranking is not None
        request = ranking_pb2.RankRequest(
            meta=common_pb2.RequestMeta(artifact_version=self.version, request_id=request_id),
            user=common_pb2.UserContext(user_id=req.user_id or "", recent_item_ids=history),
            query=req.query,
            query_embedding=list(understanding.embedding) if understanding else [],
            candidates=candidates,
            k=req.k,
        )
        with trace.stage("ranking"):
            try:
                reply = await self.ranking.call(
                    "Rank", request, deadline.sub_budget(1.0, reserve=ASSEMBLY_RESERVE_S)
                )
            except StageFailedError as exc:
                trace.degrade("ranking", f"{exc.reason}; retrieval order kept")
                return candidates, None
        weights = {w.objective: round(float(w.weight), 4) for w in reply.fusion_weights}
        return list(reply.candidates), weights
