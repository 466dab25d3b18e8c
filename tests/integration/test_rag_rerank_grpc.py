"""The RAG rerank service as clients see it: a real process over gRPC on the session's
quick artifact (which carries a small DIG-trained reranker)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from loadtest.local_stack import RAG_RERANK, start_service
from services.common.artifacts import ArtifactRepository
from services.common.generated.gensearch.common.v1 import common_pb2
from services.common.generated.gensearch.rag_rerank.v1 import rag_rerank_pb2 as pb
from services.common.generated.gensearch.rag_rerank.v1 import rag_rerank_pb2_grpc
from services.rag_rerank.model import RERANKER_CONFIG

pytestmark = pytest.mark.integration


@dataclass
class Client:
    stub: rag_rerank_pb2_grpc.RagRerankServiceStub
    version: str
    config: dict[str, object]
    item_id: str


@pytest.fixture(scope="module")
def rag(artifact_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    arts = ArtifactRepository(artifact_root).open()
    if not arts.has(RERANKER_CONFIG):
        pytest.fail(f"the test artifact {arts.version} has no RAG reranker")
    questions = (arts.path("rag/questions.jsonl")).read_text().splitlines()
    item_id = json.loads(questions[0])["item_id"]
    logs = tmp_path_factory.mktemp("rag")
    with ExitStack() as stack:
        served = start_service(stack, RAG_RERANK, artifact_root, logs)
        channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{served.port}"))
        yield Client(
            rag_rerank_pb2_grpc.RagRerankServiceStub(channel),
            arts.version,
            arts.read_json(RERANKER_CONFIG),
            item_id,
        )


def _docs(*texts: str) -> list[pb.Document]:
    return [pb.Document(doc_id=f"d{i}", text=t) for i, t in enumerate(texts)]


def test_scores_every_document_best_first_and_selects_by_threshold(rag: Client) -> None:
    reply = rag.stub.Rerank(
        pb.RerankRequest(
            query="Which brand makes the digital caliper?",
            documents=_docs(
                "Digital caliper, 6 inch. Brand: Neiko. Category: Calipers.",
                "Nitrile gloves, 100 count. Brand: Ammex.",
                "Lab beaker set, borosilicate glass.",
            ),
            max_documents=2,
        ),
        timeout=10,
    )
    scores = [d.score for d in reply.documents]
    assert sorted(scores, reverse=True) == scores
    assert {d.doc_id for d in reply.documents} == {"d0", "d1", "d2"}
    assert reply.threshold == pytest.approx(float(rag.config["threshold"]))
    assert reply.variant == rag.config["default_variant"]
    assert reply.artifact_version == rag.version
    selected = [d for d in reply.documents if d.selected]
    assert len(selected) <= 2
    assert all(d.score >= reply.threshold for d in selected)
    assert reply.none_selected == (not selected)


def test_min_score_above_every_score_selects_none(rag: Client) -> None:
    reply = rag.stub.Rerank(
        pb.RerankRequest(query="which brand", documents=_docs("a", "b"), min_score=1e6),
        timeout=10,
    )
    assert reply.none_selected and not any(d.selected for d in reply.documents)
    assert reply.threshold == pytest.approx(1e6)


def test_item_ids_resolve_to_catalog_passages(rag: Client) -> None:
    reply = rag.stub.Rerank(
        pb.RerankRequest(query="what is it made of", documents=[pb.Document(item_id=rag.item_id)]),
        timeout=10,
    )
    ids = sorted(d.doc_id for d in reply.documents)
    assert ids[0].startswith(f"{rag.item_id}#")
    assert f"{rag.item_id}#spec0" in ids
    assert all(d.item_id == rag.item_id and d.text for d in reply.documents)


def test_long_documents_are_truncated_and_reported(rag: Client) -> None:
    reply = rag.stub.Rerank(
        pb.RerankRequest(query="q", documents=_docs("word " * 700, "short text")), timeout=10
    )
    by_id = {d.doc_id: d for d in reply.documents}
    assert by_id["d0"].truncated and by_id["d0"].tokens == reply.max_tokens
    assert not by_id["d1"].truncated and by_id["d1"].tokens < 20


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (pb.RerankRequest(query="", documents=_docs("a")), "query"),
        (pb.RerankRequest(query="q"), "at least one document"),
        (pb.RerankRequest(query="q", documents=_docs("a" * 5000)), "characters"),
        (pb.RerankRequest(query="q", documents=_docs(*["x"] * 101)), "more than 100"),
        (pb.RerankRequest(query="q" * 600, documents=_docs("a")), "query"),
        (pb.RerankRequest(query="q", documents=_docs("a"), min_score=float("inf")), "finite"),
        (
            pb.RerankRequest(query="q", documents=[pb.Document(text="a", item_id="1")]),
            "not both",
        ),
    ],
)
def test_bad_input_is_invalid_argument(
    rag: Client, request_: pb.RerankRequest, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        rag.stub.Rerank(request_, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")


def test_unknown_item_is_not_found(rag: Client) -> None:
    with pytest.raises(grpc.RpcError) as err:
        rag.stub.Rerank(
            pb.RerankRequest(query="q", documents=[pb.Document(item_id="no-such")]), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_pinned_other_version_is_refused(rag: Client) -> None:
    with pytest.raises(grpc.RpcError) as err:
        rag.stub.Rerank(
            pb.RerankRequest(
                meta=common_pb2.RequestMeta(artifact_version="other"),
                query="q",
                documents=_docs("a"),
            ),
            timeout=10,
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_get_info(rag: Client) -> None:
    info = rag.stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    assert info.version == rag.version
    assert list(info.models) == ["rag_reranker_int8"]
    assert dict(info.execution_providers) == {"rag_reranker_int8": "CPUExecutionProvider"}
