"""Runs a request's hybrid side sources (lexical, dense) beside the decoder, within budget.

Each side source runs in a worker thread while the request waits for its decode in the
dynamic batcher. A source that has not finished when its budget is spent, or that fails,
is dropped from this request's fusion and the answer says so (a ``retrieval.<source>``
degradation); the request itself still succeeds with what the other sources found.
"""

from __future__ import annotations

import asyncio
import logging

from services.common.deadline import Deadline
from services.retrieval import metrics
from services.retrieval.engine import SIDE_SOURCES, Prepared, RetrievalEngine

log = logging.getLogger(__name__)


async def _one(
    engine: RetrievalEngine, prepared: Prepared, source: str, budget: float
) -> list[tuple[int, float]] | None:
    if budget <= 0:
        metrics.SOURCE_DROPPED.labels(source, "timeout").inc()
        prepared.drop_source(source, "no time left in the budget; dropped")
        return None
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(engine.source_candidates, prepared, source), budget
        )
    except TimeoutError:
        metrics.SOURCE_DROPPED.labels(source, "timeout").inc()
        prepared.drop_source(source, f"not done within {budget * 1000:.0f} ms; dropped")
    except Exception as exc:  # an optional source: never fail the request for it
        log.exception("hybrid source failed", extra={"source": source})
        metrics.SOURCE_DROPPED.labels(source, "error").inc()
        prepared.drop_source(source, f"failed: {type(exc).__name__}; dropped")
    return None


def start_side_sources(
    engine: RetrievalEngine, prepared: Prepared, deadline: Deadline
) -> dict[str, asyncio.Task[list[tuple[int, float]] | None]]:
    """Start every side source ``prepared`` asks for; each may use the same share of the
    remaining deadline as decoding (``decode_budget_fraction``)."""
    budget = deadline.remaining() * engine.settings.decode_budget_fraction
    return {
        source: asyncio.create_task(_one(engine, prepared, source, budget))
        for source in SIDE_SOURCES
        if source in prepared.sources
    }


async def collect(
    tasks: dict[str, asyncio.Task[list[tuple[int, float]] | None]],
) -> dict[str, list[tuple[int, float]]]:
    """The lists of the side sources that finished in time (dropped ones are left out)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for source, task in tasks.items():
        hits = await task
        if hits is not None:
            out[source] = hits
    return out
