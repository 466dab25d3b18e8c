"""Runs retrievers over split x mode and computes Recall/NDCG.

Modes:
- ``search``: derived query only (Ai et al. 2017 category words, or title words).
- ``search+history``: the same derived query plus the user's history.
- ``recommendation``: history only, no query.

Items already in the user's history are NOT removed from rankings by default (the standard
TIGER protocol for this data; in a log with repeat purchases they are possible targets).
``exclude_history`` removes them, identically for every method. The shared Amazon log has
no repeats (no user's validation or test item is in that user's earlier history): on it a
history item in a list is always a miss, and a recommender that serves it would skip it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from tqdm import tqdm

from models_export.evaluation.data import SPLITS, EvalData
from models_export.evaluation.metrics import all_metrics, max_k, target_ranks
from models_export.evaluation.protocol import (
    MODES,
    RECOMMENDATION,
    SEARCH,
    SEARCH_HISTORY,
    EvalCase,
    Retriever,
)

DERIVED_NOTE = (
    "Search-mode queries are DERIVED from the target item (Ai et al., SIGIR 2017: category-path "
    "words, lower-cased, deduplicated, stop-words removed; 'title' = 2-4 informative title "
    "words), not real user queries."
)


@dataclass(slots=True)
class ResultRow:
    """One (split, mode, query kind, method) cell block; ``metrics`` is None when n/a."""

    split: str
    mode: str
    query_kind: str | None
    method: str
    n: int
    metrics: dict[str, float] | None
    seconds: float = 0.0
    note: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(slots=True)
class EvalSettings:
    splits: Sequence[str] = SPLITS
    query_kinds: Sequence[str] | None = None  # None = every kind present in the data
    exclude_history: bool = False
    batch_size: int = 512
    show_progress: bool = True
    modes: Sequence[str] = field(default_factory=lambda: list(MODES))


def rank_cases(
    retriever: Retriever,
    cases: Sequence[EvalCase],
    k: int,
    exclude_history: bool = False,
    batch_size: int = 512,
    desc: str = "",
    show_progress: bool = False,
) -> list[list[int]]:
    """Ask ``retriever`` for the top ``k`` of every case, in batches.

    With ``exclude_history`` each request names its history as ``exclude`` and the retriever
    is asked for extra items, so that ``k`` remain after the history items are filtered out.
    """
    out: list[list[int]] = []
    bar = tqdm(total=len(cases), desc=desc, unit="q", disable=not show_progress, leave=False)
    for start in range(0, len(cases), batch_size):
        batch = cases[start : start + batch_size]
        requests = [c.request for c in batch]
        if not exclude_history:
            out.extend(list(r[:k]) for r in retriever.retrieve(requests, k))
        else:
            requests = [dataclasses.replace(r, exclude=r.history) for r in requests]
            extra = max((len(set(r.history)) for r in requests), default=0)
            for req, ranked in zip(requests, retriever.retrieve(requests, k + extra), strict=True):
                seen = set(req.history)
                out.append([i for i in ranked if i not in seen][:k])
        bar.update(len(batch))
    bar.close()
    return out


def evaluate_cases(
    retriever: Retriever,
    cases: Sequence[EvalCase],
    exclude_history: bool = False,
    batch_size: int = 512,
    desc: str = "",
    show_progress: bool = False,
) -> tuple[dict[str, float], float]:
    """Metrics of ``retriever`` on ``cases`` and the seconds it took."""
    t0 = time.perf_counter()
    ranked = rank_cases(retriever, cases, max_k(), exclude_history, batch_size, desc, show_progress)
    ranks = target_ranks(ranked, [c.target for c in cases])
    return all_metrics(ranks), time.perf_counter() - t0


def _not_applicable(mode: str) -> str:
    if mode == SEARCH_HISTORY:
        return "n/a: method does not use history together with a query"
    if mode == SEARCH:
        return "n/a: method does not read a query"
    return "n/a: method needs a query"


def run_suite(
    retrievers: Sequence[Retriever], data: EvalData, settings: EvalSettings | None = None
) -> list[ResultRow]:
    """Every retriever on every split x mode (x query kind); n/a rows where a mode doesn't apply."""
    s = settings or EvalSettings()
    kinds = list(s.query_kinds) if s.query_kinds is not None else data.query_kinds()
    rows: list[ResultRow] = []
    for split in s.splits:
        blocks: list[tuple[str, str | None, list[EvalCase]]] = []
        for mode in s.modes:
            if mode == RECOMMENDATION:
                blocks.append((mode, None, data.recommendation_cases(split)))
            else:
                for kind in kinds:
                    cases = data.search_cases(split, kind, with_history=mode == SEARCH_HISTORY)
                    blocks.append((mode, kind, cases))
        for mode, qkind, cases in blocks:
            for r in retrievers:
                if mode not in r.modes:
                    rows.append(
                        ResultRow(
                            split, mode, qkind, r.name, len(cases), None, note=_not_applicable(mode)
                        )
                    )
                    continue
                label = f"{split}/{mode}/{qkind or '-'}/{r.name}"
                metrics, secs = evaluate_cases(
                    r, cases, s.exclude_history, s.batch_size, label, s.show_progress
                )
                rows.append(ResultRow(split, mode, qkind, r.name, len(cases), metrics, secs))
    return rows
