"""Query understanding in process, for offline measurements: the artifact's service engine
(the same lexicon, speller, encoder and intent head the gRPC service loads)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.common.generated.gensearch.query_understanding.v1 import query_understanding_pb2
from services.common.text import MAX_QUERY_CHARS, normalize_query
from services.query_understanding.config import QueryUnderstandingSettings
from services.query_understanding.engine import QueryUnderstander
from services.query_understanding.loader import load_understander

BATCH = 256


def open_understander(root: Path, version: str, **settings: Any) -> QueryUnderstander:
    """The understander of ``version`` under ``root`` (service settings overridable)."""
    return load_understander(
        QueryUnderstandingSettings.model_validate(
            {"port": 0, "artifact_dir": root, "artifact_version": version, **settings}
        )
    )


def _cut(text: str) -> str:
    """``text`` cut to the service's query limit at a word boundary (long item titles)."""
    norm = normalize_query(text)
    return norm if len(norm) <= MAX_QUERY_CHARS else norm[:MAX_QUERY_CHARS].rsplit(" ", 1)[0]


def understand(qu: QueryUnderstander, texts: Sequence[str]) -> list[tuple[str, str]]:
    """(corrected query, keywords joined by spaces) per text, in batches."""
    out: list[tuple[str, str]] = []
    for start in range(0, len(texts), BATCH):
        reqs = [
            query_understanding_pb2.UnderstandRequest(query=_cut(t))
            for t in texts[start : start + BATCH]
        ]
        out.extend((r.corrected_query, " ".join(r.keywords)) for r in qu.understand(reqs))
    return out
