"""Artifact pipeline step ``query_understanding``: the catalog's lexicon (spelling
vocabulary, brands, category terms, materials, sizes) and the calibrated category-intent
head over the artifact's query encoder (:mod:`models_export.query_intent`).

Everything comes from the catalog in this build, so the service works on any catalog the
pipeline accepts. Skipped for a catalog without item text (no queries to understand).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING

from models_export.ingest import Item
from models_export.query_intent import IntentConfig, build_intent, intent_summary
from services.common.text_encoder import TEXT_ENCODER_MODEL, TextEncoder
from services.query_understanding.lexicon import LEXICON_FILE, Lexicon, mine_lexicon
from services.query_understanding.spelling import SpellCorrector

if TYPE_CHECKING:
    from models_export.pipeline import BuildContext

#: the build's encoder threads (the machine is the build's alone)
BUILD_THREADS = 2


def catalog_lexicon(items: Sequence[Item]) -> Lexicon:
    """The lexicon mined from the catalog's items."""
    return mine_lexicon(
        [i.title for i in items],
        [i.brand for i in items],
        [i.categories for i in items],
        [i.description for i in items],
    )


def step_query_understanding(ctx: BuildContext) -> str:
    """Mine the lexicon, train + export + evaluate the intent head."""
    if not ctx.has_text:
        return "skipped: the catalog has no item text (recommendation mode only)"
    if not (ctx.version_dir / TEXT_ENCODER_MODEL).is_file():
        return "skipped: this build has no text encoder (the text_encoder step did not run)"
    items = ctx.items()
    lexicon = catalog_lexicon(items)
    lexicon.save(ctx.path(LEXICON_FILE).parent)
    speller = SpellCorrector(lexicon)
    encoder = TextEncoder.load(lambda rel: ctx.version_dir / rel, BUILD_THREADS)
    config = IntentConfig.for_mode(ctx.quick)
    results = build_intent(
        items,
        encoder.encode,
        ctx.version_dir,
        config,
        correct=lambda q: speller.correct(q).text,
    )
    ctx.config["query_understanding"] = {"intent": asdict(config)}
    ctx.eval_results["query_understanding"] = {
        "lexicon": {
            "words": len(lexicon.word_counts),
            "brands": len(lexicon.brands),
            "category_terms": len(lexicon.category_terms),
            "materials": len(lexicon.materials),
            "sizes": len(lexicon.sizes),
        },
        "intent": results,
    }
    return (
        f"lexicon {len(lexicon.word_counts)} words / {len(lexicon.brands)} brands; "
        + intent_summary(results)
    )
