"""Hybrid candidates in the retrieval service: sources, switches, exclusions, budgets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.deadline import Deadline
from services.common.generated.gensearch.retrieval.v1 import retrieval_pb2
from services.retrieval.config import RetrievalSettings
from services.retrieval.engine import RetrievalEngine
from services.retrieval.hybrid import collect, start_side_sources
from services.retrieval.loader import load_engine
from tests.integration.test_retrieval_grpc import (
    ANN,
    DENSE,
    GENERATED,
    LEXICAL,
    RetrievalClient,
    _history,
    _request,
    _serve,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def retrieval(
    artifact_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RetrievalClient]:
    with _serve(artifact_root, tmp_path_factory.mktemp("hybrid")) as served:
        yield served


def test_text_queries_fuse_every_source_and_tag_each_item(retrieval: RetrievalClient) -> None:
    reply = retrieval.stub.Retrieve(_request(query="digital caliper", k=10), timeout=5)
    assert len(reply.candidates) == 10 and not reply.degraded
    for c in reply.candidates:
        assert c.sources and c.source == c.sources[0]
        assert len(set(c.sources)) == len(c.sources)
    seen = {s for c in reply.candidates for s in c.sources}
    assert {LEXICAL, DENSE} <= seen
    scores = [c.retrieval_score for c in reply.candidates]
    assert scores == sorted(scores, reverse=True) and scores[-1] > 0  # RRF scores
    assert "lexical" in retrieval.stub.GetInfo(retrieval_pb2.GetInfoRequest()).models
    assert retrieval.metric("gensearch_retrieval_source_seconds_count", {"source": "lexical"}) > 0


def test_history_only_requests_keep_the_generator_path(retrieval: RetrievalClient) -> None:
    reply = retrieval.stub.Retrieve(_request(query="", user=_history(retrieval), k=10), timeout=5)
    assert len(reply.candidates) == 10
    assert {c.source for c in reply.candidates} <= {GENERATED, ANN}
    assert all(list(c.sources) == [c.source] for c in reply.candidates)


def test_exclusions_hold_for_every_source(retrieval: RetrievalClient) -> None:
    first = retrieval.stub.Retrieve(_request(query="nitrile gloves", k=20), timeout=5)
    banned = [c.item_id for c in first.candidates]
    second = retrieval.stub.Retrieve(
        _request(query="nitrile gloves", k=20, exclude_item_ids=banned), timeout=5
    )
    assert len(second.candidates) == 20
    assert not {c.item_id for c in second.candidates} & set(banned)


def test_each_source_can_be_switched_off(artifact_root: Path, tmp_path: Path) -> None:
    env = {
        "GENSEARCH_RETRIEVAL_SOURCE_LEXICAL": "false",
        "GENSEARCH_RETRIEVAL_SOURCE_GENERATED": "false",
    }
    with _serve(artifact_root, tmp_path, env) as served:
        reply = served.stub.Retrieve(_request(query="digital caliper", k=10), timeout=5)
        assert len(reply.candidates) == 10
        assert {s for c in reply.candidates for s in c.sources} == {DENSE}


def _engine(artifact_root: Path) -> RetrievalEngine:
    return load_engine(RetrievalSettings(port=0, artifact_dir=artifact_root))


def test_a_source_that_misses_its_budget_is_dropped_and_said(artifact_root: Path) -> None:
    engine = _engine(artifact_root)
    assert engine.lexical is not None
    real_search = engine.lexical.search

    def slow_search(*args: object, **kwargs: object) -> list[tuple[int, float]]:
        time.sleep(0.5)
        return real_search(*args, **kwargs)  # type: ignore[arg-type]

    engine.lexical.search = slow_search  # type: ignore[method-assign]

    async def run() -> tuple[retrieval_pb2.RetrieveResponse, float]:
        started = time.perf_counter()
        deadline = Deadline.after(0.2)
        prepared = engine.prepare(retrieval_pb2.RetrieveRequest(query="gloves", k=10), deadline)
        tasks = start_side_sources(engine, prepared, deadline)
        decoded = engine.generator.decode([engine.job(prepared)])[0]
        reply = engine.finish(prepared, decoded, await collect(tasks))
        return reply, time.perf_counter() - started

    reply, took = asyncio.run(run())
    assert took < 0.45, "the request must not wait for the slow source"
    [note] = [d for d in reply.degraded if d.stage == "retrieval.lexical"]
    assert "dropped" in note.reason
    assert len(reply.candidates) == 10
    assert LEXICAL not in {s for c in reply.candidates for s in c.sources}


def test_a_failing_source_degrades_the_answer(artifact_root: Path) -> None:
    engine = _engine(artifact_root)
    assert engine.ann is not None

    def broken(*_args: object, **_kwargs: object) -> list[tuple[int, float]]:
        raise RuntimeError("index gone")

    engine.ann.search = broken  # type: ignore[method-assign]

    async def run() -> retrieval_pb2.RetrieveResponse:
        deadline = Deadline.after(2.0)
        prepared = engine.prepare(
            retrieval_pb2.RetrieveRequest(query="gloves", k=10, disable_ann_fill=True), deadline
        )
        tasks = start_side_sources(engine, prepared, deadline)
        decoded = engine.generator.decode([engine.job(prepared)])[0]
        return engine.finish(prepared, decoded, await collect(tasks))

    reply = asyncio.run(run())
    [note] = [d for d in reply.degraded if d.stage == "retrieval.dense"]
    assert "RuntimeError" in note.reason
    assert len(reply.candidates) == 10


def test_keywords_reach_only_a_generator_trained_with_them(artifact_root: Path) -> None:
    engine = _engine(artifact_root)
    request = retrieval_pb2.RetrieveRequest(
        query="gloves", keywords=["safety", "Nitrile"], k=10, query_embedding=[0.0] * 384
    )
    engine.keyword_input = False
    prepared = engine.prepare(request, Deadline.after(2.0))
    assert prepared.query == "gloves" and engine.job(prepared).query == "gloves"
    assert prepared.query_embedding is not None  # the given embedding, not re-encoded
    engine.keyword_input = True
    prepared = engine.prepare(request, Deadline.after(2.0))
    assert prepared.query == "gloves"  # BM25 and dense still read the query alone
    assert engine.job(prepared).query == "gloves safety nitrile"
