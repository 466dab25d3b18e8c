"""Build a warmed :class:`RetrievalEngine` from one manifest-checked artifact version."""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import numpy as np

from services.common.artifacts import ArtifactRepository, ArtifactSet
from services.common.config import load_settings
from services.common.errors import ArtifactIntegrityError
from services.common.onnx_sessions import ExecutionSettings, providers_in_use
from services.common.text_encoder import TEXT_ENCODER_MODEL, TextEncoder
from services.retrieval.ann import AnnIndex
from services.retrieval.catalog import Catalog
from services.retrieval.config import RetrievalSettings
from services.retrieval.covisit import SETTINGS_FILE, TABLE_FILE, CovisitPrior
from services.retrieval.encoding import CONFIG_FILE, EncodingConfig
from services.retrieval.engine import SIDE_SOURCES, DecodeJob, Prepared, RetrievalEngine
from services.retrieval.fusion import FUSION_FILE, FusionPolicy
from services.retrieval.lexical import CONFIG_FILE as LEXICAL_CONFIG
from services.retrieval.lexical import LexicalIndex
from services.retrieval.onnx_generator import DECODER_NAME, ENCODER_NAME, OnnxSidGenerator
from services.retrieval.trie import SidTrie

log = logging.getLogger(__name__)

GENERATOR_CODES = "generator/sid_codes.npy"
SID_CODES = "sids/codes.npy"
SID_TRIE = "sids/trie.npz"


def _codes_and_trie(
    arts: ArtifactSet, encoder_sizes: tuple[int, ...]
) -> tuple[np.ndarray, SidTrie]:
    """The SIDs the generator was trained on and their trie (the stored one when it matches)."""
    if not arts.has(GENERATOR_CODES):
        raise ArtifactIntegrityError(
            f"artifact {arts.version} has no trained generator ({GENERATOR_CODES}); "
            "build it with `make artifacts`"
        )
    codes = np.load(arts.path(GENERATOR_CODES), allow_pickle=False).astype(np.int64)
    if arts.has(SID_TRIE) and arts.has(SID_CODES):
        stored = np.load(arts.path(SID_CODES), allow_pickle=False)
        if stored.shape == codes.shape and np.array_equal(stored, codes):
            trie = SidTrie.load(arts.path(SID_TRIE))
            if tuple(trie.codebook_sizes) == encoder_sizes:
                return codes, trie
    # The generator was trained on another SID index (e.g. a published one): build its trie.
    return codes, SidTrie.build(codes, encoder_sizes, version=arts.version)


def _prior(arts: ArtifactSet, settings: RetrievalSettings, n_items: int) -> CovisitPrior | None:
    """The co-visitation decoding prior, when enabled, present and chosen (weight > 0)."""
    if not (settings.covisit_prior and arts.has(TABLE_FILE) and arts.has(SETTINGS_FILE)):
        return None
    prior = CovisitPrior.from_files(arts.path(TABLE_FILE), arts.path(SETTINGS_FILE))
    if prior.table.num_items != n_items:
        raise ArtifactIntegrityError(
            f"co-visitation table covers {prior.table.num_items} items, the catalog {n_items}"
        )
    if settings.covisit_prior_weight is not None:
        prior = dataclasses.replace(prior, weight=settings.covisit_prior_weight)
    return prior if prior.weight > 0 else None


def _lexical(arts: ArtifactSet, n_items: int) -> LexicalIndex | None:
    """The BM25 index of the item text, when the artifact has one (text catalogs do)."""
    if not arts.has(LEXICAL_CONFIG):
        return None
    lexical = LexicalIndex.load(arts.path)
    if lexical.num_items != n_items:
        raise ArtifactIntegrityError(
            f"lexical index covers {lexical.num_items} items, the catalog {n_items}"
        )
    return lexical


def _fusion(arts: ArtifactSet) -> FusionPolicy:
    """The fusion weights the build chose on validation (RRF defaults when absent)."""
    if not arts.has(FUSION_FILE):
        return FusionPolicy()
    return FusionPolicy.from_dict(json.loads(arts.path(FUSION_FILE).read_text()))


def load_engine(settings: RetrievalSettings) -> RetrievalEngine:
    """Open the configured version, load every model, warm up and calibrate the beam cost."""
    start = time.perf_counter()
    arts = ArtifactRepository(settings.artifact_dir).open(settings.artifact_version or None)
    encoding_cfg = arts.path(f"generator/{CONFIG_FILE}")
    encoding = EncodingConfig.from_json(encoding_cfg.read_text())
    sizes = encoding.codebook_sizes
    codes, trie = _codes_and_trie(arts, tuple(sizes))
    execution = load_settings(ExecutionSettings)
    generator = OnnxSidGenerator.from_artifact(
        arts.path,
        trie,
        codes,
        settings.intra_op_threads,
        encoder_threads=settings.encoder_threads or None,
        execution=execution,
        io_binding=settings.io_binding,
    )
    catalog = Catalog.load(arts, codes)
    ann = AnnIndex(
        np.load(arts.path("embeddings/items.npy"), allow_pickle=False),
        use_gpu=settings.ann_gpu,
        gpu_device=execution.cuda_device_id,
    )
    embedder = None
    if arts.has(TEXT_ENCODER_MODEL):
        embedder = TextEncoder.load(arts.path, settings.intra_op_threads, execution=execution)
    prior = _prior(arts, settings, len(catalog))
    lexical = _lexical(arts, len(catalog))
    engine = RetrievalEngine(
        settings,
        arts.version,
        catalog,
        trie,
        generator,
        ann,
        embedder,
        manifest_sha256=arts.manifest_sha256,
        model_names=[
            ENCODER_NAME,
            DECODER_NAME,
            *(["text_encoder"] if embedder else []),
            *(["lexical"] if lexical else []),
        ],
        prior=prior,
        lexical=lexical,
        fusion=_fusion(arts),
        keyword_input=encoding.keywords,
        has_text=bool(arts.manifest.config.get("has_text", True)),
    )
    warm_up(engine)
    log.info(
        "engine loaded",
        extra={
            "version": arts.version,
            "items": len(catalog),
            "depth": trie.depth,
            "prior_weight": prior.weight if prior else 0.0,
            "execution_providers": providers_in_use(),
            "device_search": generator.device_search is not None,
            "ann_device": ann.device,
            "seconds": round(time.perf_counter() - start, 2),
        },
    )
    return engine


def warm_up(engine: RetrievalEngine) -> None:
    """Run real decodes at two beam widths; fit the deadline-aware beam cost model."""
    history = np.arange(min(5, len(engine.catalog)), dtype=np.int64)
    empty = np.zeros(0, dtype=np.int64)
    timings = []
    for beam in (1, engine.settings.default_beam_width):
        job = DecodeJob("warm up query", history, engine.trie, beam, 10, empty)
        engine.generator.decode([job])  # first call pays one-off allocations
        start = time.perf_counter()
        for _ in range(3):
            engine.generator.decode([job])
        timings.append((beam, (time.perf_counter() - start) / 3))
    # the other decode paths compile their loops on first use (seconds): run them now, not
    # in a request's deadline: an exclusion, and a batch over two tries (the numpy path)
    excluding = DecodeJob("warm up query", history, engine.trie, 4, 10, history[:2])
    subset = engine.trie.subset(np.arange(min(64, len(engine.catalog)), dtype=np.int64))
    filtered = DecodeJob("warm up query", history, subset, 4, 10, empty)
    engine.generator.decode([excluding])
    engine.generator.decode([excluding, filtered])
    if engine.embedder is not None:
        engine.embedder.encode(["warm up"])
    probe = Prepared(
        query="warm up query",
        history_rows=history,
        k=10,
        beam_width=4,
        exclude=set(),
        allowed_rows=None,
        filter_key=(),
        query_embedding=None,
        ann_fill=False,
        sources=engine.plan_sources("warm up query", has_embedding=False),
    )
    for source in SIDE_SOURCES:
        if source in probe.sources:
            engine.source_candidates(probe, source)
    engine.cost.calibrate(timings[0], timings[1])
