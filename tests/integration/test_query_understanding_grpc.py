"""The query-understanding service as clients see it: a real process over gRPC, on the
session's quick artifact build (its lexicon and intent head come from the real catalog)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from loadtest.local_stack import QU, start_service
from models_export.ingest import read_items
from services.common.artifacts import ArtifactRepository
from services.common.generated.gensearch.common.v1 import common_pb2
from services.common.generated.gensearch.query_understanding.v1 import (
    query_understanding_pb2 as qu_pb2,
)
from services.common.generated.gensearch.query_understanding.v1 import (
    query_understanding_pb2_grpc as qu_grpc,
)
from services.common.text import normalize_query
from services.query_understanding.intent import PATH_SEPARATOR

pytestmark = pytest.mark.integration


@dataclass
class Client:
    stub: qu_grpc.QueryUnderstandingServiceStub
    version: str
    level3: set[str]
    brands: list[str]


@pytest.fixture(scope="module")
def qu(artifact_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    arts = ArtifactRepository(artifact_root).open()
    items = read_items(artifact_root / arts.version / "tables")
    level3 = {PATH_SEPARATOR.join(i.categories[:3]) for i in items if i.categories}
    brands = sorted({normalize_query(i.brand) for i in items if i.brand})
    with ExitStack() as stack:
        served = start_service(stack, QU, artifact_root, tmp_path_factory.mktemp("qu"))
        channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{served.port}"))
        yield Client(qu_grpc.QueryUnderstandingServiceStub(channel), arts.version, level3, brands)


def _understand(qu: Client, query: str, **fields: object) -> qu_pb2.UnderstandResponse:
    reply: qu_pb2.UnderstandResponse = qu.stub.Understand(
        qu_pb2.UnderstandRequest(query=query, **fields),
        timeout=5,  # type: ignore[arg-type]
    )
    return reply


def test_get_info_names_the_version_and_models(qu: Client) -> None:
    info = qu.stub.GetInfo(qu_pb2.GetInfoRequest(), timeout=5)
    assert info.version == qu.version
    assert {"text_encoder", "query_intent", "lexicon"} <= set(info.models)


def test_understand_normalises_corrects_and_classifies(qu: Client) -> None:
    reply = _understand(qu, "  Digitl  CALIPER ", want_embedding=True, top_categories=3)
    assert reply.normalized_query == "digitl caliper"
    assert reply.corrected_query == "digital caliper"
    assert reply.artifact_version == qu.version
    level3 = [c for c in reply.categories if c.category in qu.level3]
    assert len(level3) == 3
    probs = [c.probability for c in level3]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-5
    assert "Measure" in level3[0].category  # calipers are measuring tools
    vec = np.asarray(reply.embedding)
    assert vec.shape == (384,) and abs(float(np.linalg.norm(vec)) - 1.0) < 1e-3


def test_embedding_only_when_asked_and_brands_found(qu: Client) -> None:
    brand = next(b for b in qu.brands if b.isalpha() and len(b) > 4)
    reply = _understand(qu, f"{brand} gloves")
    assert not reply.embedding
    assert ("brand", brand) in {(a.name, a.value) for a in reply.attributes}
    assert brand in reply.keywords


def test_batch_keeps_order_and_length(qu: Client) -> None:
    texts = ["digital caliper", "nitrile gloves", "lab beaker 250 ml", "hex bolts"]
    reply = qu.stub.BatchUnderstand(
        qu_pb2.BatchUnderstandRequest(requests=[qu_pb2.UnderstandRequest(query=t) for t in texts]),
        timeout=5,
    )
    assert [r.normalized_query for r in reply.responses] == [normalize_query(t) for t in texts]
    single = _understand(qu, texts[2])
    assert reply.responses[2].categories[0].category == single.categories[0].category


@pytest.mark.parametrize("query", ["", "   ", "a\x00b", "x" * 2000])
def test_bad_queries_get_invalid_argument(qu: Client, query: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _understand(qu, query)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details()


def test_batch_limits_and_pinned_versions_are_enforced(qu: Client) -> None:
    with pytest.raises(grpc.RpcError) as err:
        qu.stub.BatchUnderstand(qu_pb2.BatchUnderstandRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = qu_pb2.BatchUnderstandRequest(
        requests=[qu_pb2.UnderstandRequest(query="ok"), qu_pb2.UnderstandRequest(query="")]
    )
    with pytest.raises(grpc.RpcError) as err:
        qu.stub.BatchUnderstand(bad, timeout=5)
    assert "request 1" in err.value.details()
    pinned = qu_pb2.UnderstandRequest(
        query="caliper", meta=common_pb2.RequestMeta(artifact_version="other")
    )
    with pytest.raises(grpc.RpcError) as err:
        qu.stub.Understand(pinned, timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
