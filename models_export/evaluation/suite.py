"""Build the baselines (with their few settings chosen on VALIDATION) and run the harness.

Used by ``python -m models_export evaluate`` and by the artifact pipeline's evaluation step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from models_export.evaluation.baselines.bm25 import DEFAULT_FIELDS, Bm25Retriever, item_text
from models_export.evaluation.baselines.covisit import CovisitRetriever
from models_export.evaluation.baselines.dense import (
    DenseHistoryRetriever,
    DenseRetriever,
    TextEncoder,
)
from models_export.evaluation.baselines.history_mean import HistoryMeanRetriever
from models_export.evaluation.baselines.popularity import PopularityRetriever
from models_export.evaluation.data import QUERY_KINDS, SPLITS, EvalData
from models_export.evaluation.harness import (
    DERIVED_NOTE,
    EvalSettings,
    ResultRow,
    evaluate_cases,
    run_suite,
)
from models_export.evaluation.protocol import Retriever, tie_break_key

ALL_METHODS: tuple[str, ...] = (
    "popularity",
    "bm25",
    "dense",
    "dense+history",
    "history-mean",
    "recent-mean",
    "covisit",
    "sasrec",
)
SELECTION_METRIC = "ndcg@10"


@dataclass(slots=True)
class SuiteConfig:
    """What to run; the grids are searched on the validation split only."""

    methods: Sequence[str] = ALL_METHODS
    splits: Sequence[str] = SPLITS
    exclude_history: bool = False
    tie_seed: int = 0
    bm25_field_grid: Sequence[tuple[str, ...]] = (
        DEFAULT_FIELDS,  # title, brand, categories
        ("title", "categories"),
        ("title", "brand", "categories", "description"),
        ("categories",),
    )
    history_last_n_grid: Sequence[int | None] = (None, 1, 3, 5, 10)
    dense_history_weight_grid: Sequence[float] = (0.1, 0.25, 0.5, 1.0)
    covisit_decay_grid: Sequence[float] = (0.0, 0.3, 0.5, 0.7, 1.0)
    sasrec: dict[str, Any] = field(default_factory=dict)  # SasRecConfig overrides
    batch_size: int = 512

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["methods"] = list(self.methods)
        d["splits"] = list(self.splits)
        return d


@dataclass(slots=True)
class SuiteRun:
    rows: list[ResultRow]
    choices: dict[str, Any]
    build_seconds: dict[str, float]
    total_seconds: float
    config: dict[str, Any]
    source: str

    def protocol(self) -> dict[str, Any]:
        return {
            "queries_derived": True,
            "note": DERIVED_NOTE,
            "split": "leave-one-out: valid = 2nd-to-last item (history = train_history), "
            "test = last item (history = train_history + valid item)",
            "history_items_removed_from_ranking": bool(self.config.get("exclude_history")),
            "ties": f"equal scores ordered by a fixed random item permutation "
            f"(seed {self.config.get('tie_seed')}), the same for every method",
            "selection": f"every setting chosen on the valid split by {SELECTION_METRIC}; "
            "test is reported, never tuned on",
            "metrics": "Recall@k = target in top k; NDCG@k = 1/log2(rank+1), one relevant item",
        }


def _mean_valid_score(
    r: Retriever, data: EvalData, kinds: Sequence[str], with_history: bool, cfg: SuiteConfig
) -> float:
    scores = []
    for kind in kinds:
        m, _ = evaluate_cases(
            r, data.search_cases("valid", kind, with_history), cfg.exclude_history, cfg.batch_size
        )
        scores.append(m[SELECTION_METRIC])
    return float(np.mean(scores))


def _pick(
    grid: Sequence[Any], score: Callable[[Any], float], name: str, log: dict[str, Any]
) -> Any:
    results = [(value, score(value)) for value in grid]
    best = max(results, key=lambda vs: vs[1])[0]  # first best wins on exact ties
    log[name] = {
        "chosen": _label(best),
        "valid_" + SELECTION_METRIC: {_label(v): round(s, 5) for v, s in results},
    }
    return best


def _label(value: Any) -> str:
    if isinstance(value, tuple):
        return "+".join(str(v) for v in value)
    return "all" if value is None else str(value)


def build_baselines(
    data: EvalData,
    cfg: SuiteConfig,
    encoder_factory: Callable[[], TextEncoder] | None = None,
    show_progress: bool = True,
) -> tuple[list[Retriever], dict[str, Any], dict[str, float]]:
    """Fit the requested baselines; returns them, the validation choices and build seconds."""
    unknown = set(cfg.methods) - set(ALL_METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {ALL_METHODS}")
    tie = tie_break_key(data.num_items, cfg.tie_seed)
    kinds = [k for k in QUERY_KINDS if k in data.query_kinds()]
    out: list[Retriever] = []
    choices: dict[str, Any] = {}
    secs: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Retriever]) -> None:
        t0 = time.perf_counter()
        out.append(fn())
        secs[name] = round(time.perf_counter() - t0, 2)

    if "popularity" in cfg.methods:
        timed("popularity", lambda: PopularityRetriever(data.train_histories, data.num_items, tie))

    if "bm25" in cfg.methods:

        def bm25_for(fields: tuple[str, ...]) -> Bm25Retriever:
            texts = [
                item_text(
                    data.titles[i], data.brands[i], data.categories[i], data.descriptions[i], fields
                )
                for i in range(data.num_items)
            ]
            return Bm25Retriever(texts, tie_key=tie)

        def bm25() -> Retriever:
            fields = _pick(
                cfg.bm25_field_grid,
                lambda f: _mean_valid_score(bm25_for(f), data, kinds, False, cfg),
                "bm25.fields",
                choices,
            )
            return bm25_for(fields)

        timed("bm25", bm25)

    need_emb = {"dense", "dense+history", "history-mean", "recent-mean"} & set(cfg.methods)
    if need_emb and data.embeddings is None:
        raise ValueError(f"{sorted(need_emb)} need embeddings/items.npy")

    dense: DenseRetriever | None = None
    if {"dense", "dense+history"} & set(cfg.methods):
        if encoder_factory is None:
            from models_export.evaluation.baselines.minilm import minilm_encoder

            encoder_factory = minilm_encoder
        t0 = time.perf_counter()
        assert data.embeddings is not None
        dense = DenseRetriever(data.embeddings, encoder_factory(), tie)
        # Encode every distinct query text once, up front.
        dense.query_vectors(sorted({q.text for q in data.queries}))
        secs["dense"] = round(time.perf_counter() - t0, 2)
        if "dense" in cfg.methods:
            out.append(dense)

    if "history-mean" in cfg.methods:
        all_emb = data.embeddings
        assert all_emb is not None
        # The plain baseline: mean of ALL history items, nothing tuned.
        timed("history-mean", lambda: HistoryMeanRetriever(all_emb, None, tie))

    last_n: int | None = None
    if "recent-mean" in cfg.methods or "dense+history" in cfg.methods:
        assert data.embeddings is not None
        emb = data.embeddings

        def hm_score(n: int | None) -> float:
            m, _ = evaluate_cases(
                HistoryMeanRetriever(emb, n, tie),
                data.recommendation_cases("valid"),
                cfg.exclude_history,
                cfg.batch_size,
            )
            return m[SELECTION_METRIC]

        t0 = time.perf_counter()
        last_n = _pick(cfg.history_last_n_grid, hm_score, "recent-mean.last_n", choices)
        if "recent-mean" in cfg.methods:
            out.append(HistoryMeanRetriever(emb, last_n, tie, name="recent-mean"))
        secs["recent-mean"] = round(time.perf_counter() - t0, 2)

    if "dense+history" in cfg.methods:
        assert dense is not None
        d = dense

        def dh_score(w: float) -> float:
            return _mean_valid_score(DenseHistoryRetriever(d, w, last_n), data, kinds, True, cfg)

        t0 = time.perf_counter()
        weight = _pick(cfg.dense_history_weight_grid, dh_score, "dense+history.weight", choices)
        out.append(DenseHistoryRetriever(dense, weight, last_n))
        secs["dense+history"] = round(time.perf_counter() - t0, 2)

    if "covisit" in cfg.methods:

        def covisit_for(decay: float) -> CovisitRetriever:
            return CovisitRetriever(data.train_histories, data.num_items, decay, tie_key=tie)

        def covisit_score(decay: float) -> float:
            m, _ = evaluate_cases(
                covisit_for(decay),
                data.recommendation_cases("valid"),
                cfg.exclude_history,
                cfg.batch_size,
            )
            return m[SELECTION_METRIC]

        def covisit() -> Retriever:
            decay = _pick(cfg.covisit_decay_grid, covisit_score, "covisit.decay", choices)
            return covisit_for(decay)

        timed("covisit", covisit)

    if "sasrec" in cfg.methods:
        from models_export.evaluation.baselines.sasrec import SasRecConfig, train_sasrec

        scfg = SasRecConfig(**cfg.sasrec)
        t0 = time.perf_counter()
        sas = train_sasrec(
            data.train_histories,
            data.num_items,
            data.recommendation_cases("valid"),
            scfg,
            show_progress,
            tie,
        )
        secs["sasrec"] = round(time.perf_counter() - t0, 2)
        choices["sasrec"] = {"config": asdict(scfg), "training": sas.report.to_dict()}
        out.append(sas)

    order = {m: i for i, m in enumerate(ALL_METHODS)}
    out.sort(key=lambda r: order.get(r.name, len(order)))
    return out, choices, secs


def run_baselines(
    data: EvalData,
    cfg: SuiteConfig | None = None,
    encoder_factory: Callable[[], TextEncoder] | None = None,
    show_progress: bool = True,
    extra: Sequence[Retriever] = (),
) -> SuiteRun:
    """Build the baselines (plus any ``extra`` retrievers) and evaluate them all."""
    cfg = cfg or SuiteConfig()
    t0 = time.perf_counter()
    retrievers, choices, secs = build_baselines(data, cfg, encoder_factory, show_progress)
    settings = EvalSettings(
        splits=cfg.splits,
        exclude_history=cfg.exclude_history,
        batch_size=cfg.batch_size,
        show_progress=show_progress,
    )
    rows = run_suite([*retrievers, *extra], data, settings)
    return SuiteRun(rows, choices, secs, time.perf_counter() - t0, cfg.to_dict(), data.source)
