"""The RAG endpoints through the gateway: /v1/rag/rerank scores documents and selects
those worth giving an LLM; /v1/rag/context searches, reranks the top items' passages and
hands back the context; bad input gets 422; without the reranker, context degrades to the
top items' specs and rerank answers 503."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest

from loadtest.local_stack import Stack, start_stack

pytestmark = pytest.mark.e2e


def _post(stack: Stack, path: str, body: object) -> tuple[int, dict[str, object]]:
    status, _, payload = stack.request("POST", path, body)
    return status, payload


def test_rerank_scores_text_and_item_documents(redis_stack: Stack) -> None:
    assert redis_stack.rag_rerank is not None
    status, found = redis_stack.search(query="digital caliper", k=1)
    assert status == 200
    item_id = found["items"][0]["id"]
    status, body = _post(
        redis_stack,
        "/v1/rag/rerank",
        {
            "query": "Which brand makes the digital caliper?",
            "documents": [
                {"id": "mine", "text": "Digital caliper 6 inch. Brand: Neiko."},
                {"item_id": item_id},
            ],
            "max_documents": 2,
        },
    )
    assert status == 200, body
    docs = body["documents"]
    assert isinstance(docs, list) and len(docs) >= 2
    assert [d["score"] for d in docs] == sorted((d["score"] for d in docs), reverse=True)
    assert {d["id"] for d in docs} >= {"mine", f"{item_id}#spec0"}
    assert sum(d["selected"] for d in docs) <= 2
    assert body["none_selected"] == (not any(d["selected"] for d in docs))
    assert body["variant"] in ("fp32", "int8") and body["max_tokens"] > 0
    assert all(d["item_id"] == item_id for d in docs if d["id"] != "mine")


def test_context_hands_back_passages_of_searched_items(redis_stack: Stack) -> None:
    status, body = _post(
        redis_stack,
        "/v1/rag/context",
        {"query": "nitrile gloves", "user_id": "1", "items": 3, "min_score": -1000},
    )
    assert status == 200, body
    assert body["degraded"] == []
    searched = body["searched_item_ids"]
    assert isinstance(searched, list) and len(searched) == 3
    docs = body["documents"]
    assert isinstance(docs, list) and 1 <= len(docs) <= 3  # min_score -1000: the top 3 pass
    assert all(d["item_id"] in searched for d in docs)
    assert body["context"] == "\n\n".join(d["text"] for d in docs)
    # a threshold nothing reaches: no document helps, an empty context
    status, none = _post(
        redis_stack, "/v1/rag/context", {"query": "nitrile gloves", "min_score": 1000}
    )
    assert status == 200 and none["none_selected"] is True
    assert none["documents"] == [] and none["context"] == ""


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/rag/rerank", {"query": "q", "documents": []}),
        ("/v1/rag/rerank", {"query": "", "documents": [{"text": "a"}]}),
        ("/v1/rag/rerank", {"query": "q", "documents": [{"text": "a", "item_id": "1"}]}),
        ("/v1/rag/rerank", {"query": "q", "documents": [{"id": "x"}]}),
        ("/v1/rag/rerank", {"query": "q", "documents": [{"text": "a" * 5000}]}),
        ("/v1/rag/rerank", {"query": "q", "documents": [{"text": "a"}] * 101}),
        ("/v1/rag/rerank", {"query": "q", "documents": [{"text": "a"}], "min_score": 1e308}),
        ("/v1/rag/context", {"query": ""}),
        ("/v1/rag/context", {"query": "q", "items": 0}),
        ("/v1/rag/context", {"query": "x " * 200}),
    ],
)
def test_bad_input_is_422(redis_stack: Stack, path: str, body: dict[str, object]) -> None:
    status, payload = _post(redis_stack, path, body)
    assert status == 422, payload
    assert payload["detail"]


def test_a_question_without_words_gets_no_documents(redis_stack: Stack) -> None:
    status, body = _post(redis_stack, "/v1/rag/context", {"query": "*?!"})
    assert status == 200, body
    assert body["documents"] == [] and body["none_selected"] is True
    assert body["searched_item_ids"] == [] and body["notes"]


def test_an_unknown_item_is_404(redis_stack: Stack) -> None:
    body = {"query": "q", "documents": [{"item_id": "no-such"}]}
    status, payload = _post(redis_stack, "/v1/rag/rerank", body)
    assert status == 404, payload
    assert "unknown item_id 'no-such'" in str(payload["detail"])


def test_without_the_reranker_context_degrades_and_rerank_is_503(
    artifact_root: Path, tmp_path: Path
) -> None:
    with ExitStack() as stack:
        s = start_stack(stack, artifact_root, tmp_path, query_understanding=False, ranking=False)
        assert s.rag_rerank is not None
        s.rag_rerank.proc.kill()
        s.rag_rerank.proc.wait(timeout=10)
        status, body = _post(s, "/v1/rag/context", {"query": "digital caliper", "items": 3})
        assert status == 200, body
        assert body["degraded"] == ["rag_rerank"]
        docs = body["documents"]
        assert isinstance(docs, list) and len(docs) == 3
        assert [d["item_id"] for d in docs] == body["searched_item_ids"]
        assert all(d["id"].endswith("#spec0") and d["text"] for d in docs)
        status, body = _post(s, "/v1/rag/rerank", {"query": "q", "documents": [{"text": "a"}]})
        assert status == 503 and "rag_rerank" in str(body["detail"])
