"""Fuzz: arbitrary Unicode (protobuf strings are UTF-8: no lone surrogates) through the
query-understanding servicer never crashes it; every query is either understood or refused
with a clear INVALID_ARGUMENT reason."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.errors import InvalidInputError
from services.common.generated.gensearch.query_understanding.v1 import (
    query_understanding_pb2 as qu_pb2,
)
from services.common.text import MAX_QUERY_CHARS
from services.query_understanding.config import QueryUnderstandingSettings
from services.query_understanding.loader import load_understander
from services.query_understanding.server import QueryUnderstandingApp

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def app(artifact_root: Path) -> QueryUnderstandingApp:
    settings = QueryUnderstandingSettings(port=0, artifact_dir=artifact_root)
    servicer = QueryUnderstandingApp(settings, load_understander)
    asyncio.run(servicer.load())
    return servicer


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    query=st.text(st.characters(exclude_categories=("Cs",)), max_size=300)
    | st.binary(max_size=200).map(lambda b: b.decode("latin-1"))
)
def test_arbitrary_unicode_is_understood_or_refused(app: QueryUnderstandingApp, query: str) -> None:
    request = qu_pb2.UnderstandRequest(query=query, want_embedding=True)
    try:
        reply = asyncio.run(app.Understand(request, None))  # type: ignore[arg-type]
    except InvalidInputError as exc:
        assert str(exc)
        return
    assert reply.normalized_query and len(reply.normalized_query) <= MAX_QUERY_CHARS
    assert reply.corrected_query and len(reply.embedding) == 384
    assert reply.categories and all(0.0 <= c.probability <= 1.0 for c in reply.categories)
