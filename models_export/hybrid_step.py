"""Artifact pipeline steps of the hybrid candidates: the BM25 index and the fusion weights.

``lexical`` indexes the item text (``services.retrieval.lexical``) into ``lexical/``.
``fusion`` (after the generator) runs the served sources on VALIDATION derived queries,
clean and noisy, and keeps the RRF weights with the best mean NDCG@10 in
``hybrid/fusion.json``, with the whole grid for the record. Both are skipped for a
catalog without item text (recommendation mode only).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from models_export.evaluation.data import load_from_dir
from models_export.evaluation.hybrid import (
    CLEAN,
    NOISE_KINDS,
    SELECTION_METRIC,
    choose_on_validation,
    open_sources,
)
from services.retrieval.fusion import FUSION_FILE, KNOWN, UNKNOWN
from services.retrieval.lexical import LEXICAL_DIR, LexicalConfig, LexicalIndex, item_text

if TYPE_CHECKING:
    from models_export.pipeline import BuildContext

#: quick builds choose on fewer, cleaner validation classes (seconds, not minutes)
QUICK = {"max_cases": 100, "noises": (CLEAN, "typo"), "histories": (False,)}
FULL = {"max_cases": 400, "noises": (CLEAN, *NOISE_KINDS), "histories": (False, True)}
SEED = 17


def step_lexical(ctx: BuildContext) -> str:
    """BM25 over title, brand and category path, stemmed (``lexical/``)."""
    if not ctx.has_text:
        return "skipped: the catalog has no item text"
    config = LexicalConfig()
    texts = [
        item_text(i.title, i.brand, i.categories, i.description, config.fields) for i in ctx.items()
    ]
    index = LexicalIndex.build(texts, config)
    index.save(ctx.path(f"{LEXICAL_DIR}/config.json").parent)
    ctx.config["lexical"] = {
        "fields": list(config.fields),
        "stemmer": config.stemmer,
        "k1": config.k1,
        "b": config.b,
    }
    return f"BM25 over {len(texts)} items, {index.vocabulary_size} terms"


def step_fusion(ctx: BuildContext) -> str:
    """Fusion weights chosen on validation (derived queries, clean and noisy)."""
    if not ctx.has_text:
        return "skipped: the catalog has no item text"
    plan: dict[str, Any] = QUICK if ctx.quick else FULL
    data = load_from_dir(ctx.version_dir, with_embeddings=False)
    sources = open_sources(ctx.version_dir)
    policy, grid, runs = choose_on_validation(
        data, sources, plan["noises"], plan["histories"], plan["max_cases"], SEED
    )
    best = {
        cond: max((row.get(f"valid_{SELECTION_METRIC}_{cond}", 0.0) for row in grid), default=0.0)
        for cond in (KNOWN, UNKNOWN)
    }
    doc = {
        **policy.to_dict(),
        "chosen_on": "valid split, derived queries (clean and noisy), per query condition "
        f"(every term in the catalog vocabulary or not): mean {SELECTION_METRIC} over "
        f"{len(runs)} classes of up to {plan['max_cases']} cases",
        "classes": [r.qc.name for r in runs],
        "cases_with_unknown_terms": sum(not k for r in runs for k in r.known),
        "grid": grid,
    }
    ctx.path(FUSION_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    ctx.config["fusion"] = {
        "plan": {k: list(v) if isinstance(v, tuple) else v for k, v in plan.items()}
    }
    ctx.eval_results["fusion"] = {
        **policy.to_dict(),
        **{f"valid_{SELECTION_METRIC}_{cond}": score for cond, score in best.items()},
        "queries_derived": True,
    }
    known, unknown = policy.known, policy.unknown
    return (
        f"RRF weights, all terms known: {dict(known.weights)} k0 {known.k0:g}; some unknown: "
        f"{dict(unknown.weights)} k0 {unknown.k0:g} (sources {sources.names})"
    )
