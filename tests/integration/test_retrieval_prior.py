"""The retrieval engine's co-visitation prior, in process, on the quick artifact build: which
requests get it, and that a failing prior degrades a request instead of failing it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.common.deadline import Deadline
from services.common.generated.gensearch.common.v1 import common_pb2
from services.common.generated.gensearch.retrieval.v1 import retrieval_pb2
from services.retrieval.config import RetrievalSettings
from services.retrieval.engine import RetrievalEngine
from services.retrieval.loader import load_engine

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engine(artifact_root: Path) -> RetrievalEngine:
    settings = RetrievalSettings(port=0, artifact_dir=artifact_root, covisit_prior_weight=1.0)
    return load_engine(settings)


def _request(engine: RetrievalEngine, query: str = "") -> retrieval_pb2.RetrieveRequest:
    m = engine.prior.table.matrix if engine.prior else None
    assert m is not None
    leads = int(np.flatnonzero(np.diff(m.indptr) > 0)[0])  # an item with co-visits
    user = common_pb2.UserContext(user_id="u", recent_item_ids=[engine.catalog.item_ids[leads]])
    return retrieval_pb2.RetrieveRequest(k=10, query=query, user=user)


def test_only_history_only_requests_get_the_prior(engine: RetrievalEngine) -> None:
    feed = engine.job(engine.prepare(_request(engine), Deadline.after(2.0)))
    assert feed.node_bonus is not None and len(feed.node_bonus) == engine.trie.num_nodes
    search = engine.job(engine.prepare(_request(engine, "digital caliper"), Deadline.after(2.0)))
    assert search.node_bonus is None


def test_a_failing_prior_degrades_the_request(
    engine: RetrievalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("table unavailable")

    assert engine.prior is not None
    monkeypatch.setattr(type(engine.prior), "node_bonus", broken)
    prepared = engine.prepare(_request(engine), Deadline.after(2.0))
    job = engine.job(prepared)
    assert job.node_bonus is None
    reply = engine.finish(prepared, engine.decode_batch([job])[0])
    assert len(reply.candidates) == 10
    [note] = [d for d in reply.degraded if d.stage == "retrieval.prior"]
    assert "table unavailable" in note.reason
