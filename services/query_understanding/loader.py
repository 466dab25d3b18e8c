"""Open one artifact version's query-understanding parts and warm them up."""

from __future__ import annotations

import logging
import time

from services.common.artifacts import ArtifactRepository
from services.common.config import load_settings
from services.common.errors import ArtifactIntegrityError
from services.common.generated.gensearch.query_understanding.v1 import query_understanding_pb2
from services.common.onnx_sessions import ExecutionSettings, providers_in_use
from services.common.text_encoder import TEXT_ENCODER_MODEL, TextEncoder
from services.query_understanding.attributes import AttributeMatcher
from services.query_understanding.config import QueryUnderstandingSettings
from services.query_understanding.engine import QueryUnderstander
from services.query_understanding.intent import INTENT_FILE, IntentClassifier
from services.query_understanding.lexicon import LEXICON_FILE, Lexicon
from services.query_understanding.spelling import SpellCorrector

log = logging.getLogger(__name__)
WARM_UP_QUERIES = ("warm up", "a longer warm up query with several words in it")


def load_understander(settings: QueryUnderstandingSettings) -> QueryUnderstander:
    """The configured version's understander; a version built without item text (or
    before this service existed) has no lexicon, and the service refuses to start."""
    start = time.perf_counter()
    arts = ArtifactRepository(settings.artifact_dir).open(settings.artifact_version or None)
    missing = [rel for rel in (LEXICON_FILE, INTENT_FILE, TEXT_ENCODER_MODEL) if not arts.has(rel)]
    if missing:
        raise ArtifactIntegrityError(
            f"artifact {arts.version} has no query-understanding models ({', '.join(missing)} "
            "missing): it was built from a catalog without item text, or by an older pipeline"
        )
    lexicon = Lexicon.load(arts.path)
    execution = load_settings(ExecutionSettings)
    threads = settings.intra_op_threads
    engine = QueryUnderstander(
        settings,
        arts.version,
        SpellCorrector(lexicon),
        AttributeMatcher(lexicon),
        TextEncoder.load(arts.path, threads, settings.encoder_max_tokens, execution),
        IntentClassifier.load(arts.path, threads, execution),
        manifest_sha256=arts.manifest_sha256,
    )
    for query in WARM_UP_QUERIES:
        engine.understand([query_understanding_pb2.UnderstandRequest(query=query)])
    log.info(
        "understander loaded",
        extra={
            "version": arts.version,
            "words": len(lexicon.word_counts),
            "execution_providers": providers_in_use(),
            "seconds": round(time.perf_counter() - start, 2),
        },
    )
    return engine
