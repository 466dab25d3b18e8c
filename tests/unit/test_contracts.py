"""The generated contracts: versioned packages and the RPCs each service offers."""

from __future__ import annotations

from services.common.generated.gensearch.common.v1 import common_pb2
from services.common.generated.gensearch.query_understanding.v1 import query_understanding_pb2
from services.common.generated.gensearch.rag_rerank.v1 import rag_rerank_pb2
from services.common.generated.gensearch.ranking.v1 import ranking_pb2
from services.common.generated.gensearch.retrieval.v1 import retrieval_pb2

EXPECTED = {
    query_understanding_pb2: (
        "gensearch.query_understanding.v1",
        "QueryUnderstandingService",
        {"Understand", "BatchUnderstand", "GetInfo"},
    ),
    retrieval_pb2: (
        "gensearch.retrieval.v1",
        "RetrievalService",
        {"Retrieve", "BatchRetrieve", "GetInfo"},
    ),
    ranking_pb2: ("gensearch.ranking.v1", "RankingService", {"Rank", "GetInfo"}),
    rag_rerank_pb2: ("gensearch.rag_rerank.v1", "RagRerankService", {"Rerank", "GetInfo"}),
}


def test_packages_are_versioned_and_services_complete() -> None:
    assert common_pb2.DESCRIPTOR.package == "gensearch.common.v1"
    for module, (package, service, methods) in EXPECTED.items():
        assert module.DESCRIPTOR.package == package
        svc = module.DESCRIPTOR.services_by_name[service]
        assert svc.full_name == f"{package}.{service}"
        assert {m.name for m in svc.methods} == methods


def test_requests_carry_meta_and_round_trip() -> None:
    request = retrieval_pb2.RetrieveRequest(
        meta=common_pb2.RequestMeta(request_id="r1", artifact_version="v1"),
        query="hex bolts",
        user=common_pb2.UserContext(user_id="u", recent_item_ids=["1", "2"]),
        k=10,
        exclude_item_ids=["3"],
        category_prefixes=["Industrial & Scientific"],
    )
    parsed = retrieval_pb2.RetrieveRequest.FromString(request.SerializeToString())
    assert parsed == request
    assert parsed.meta.artifact_version == "v1"
    for module in (query_understanding_pb2, ranking_pb2, rag_rerank_pb2):
        requests = [m for m in module.DESCRIPTOR.message_types_by_name if m.endswith("Request")]
        for name in requests:
            fields = module.DESCRIPTOR.message_types_by_name[name].fields_by_name
            if name not in ("GetInfoRequest", "BatchUnderstandRequest"):
                assert "meta" in fields, f"{module.__name__}.{name} lacks meta"
    assert rag_rerank_pb2.RerankRequest().HasField("min_score") is False
