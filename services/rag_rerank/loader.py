"""Open one artifact version's RAG reranker and the catalog's passages, and warm it up."""

from __future__ import annotations

import logging
import time

import pyarrow.parquet as pq

from services.common.artifacts import ArtifactRepository
from services.common.config import load_settings
from services.common.errors import ArtifactIntegrityError, ConfigurationError
from services.common.generated.gensearch.rag_rerank.v1 import rag_rerank_pb2
from services.common.onnx_sessions import ExecutionSettings, providers_in_use
from services.rag_rerank.config import RagRerankSettings
from services.rag_rerank.engine import RerankConfig, Reranker
from services.rag_rerank.model import RERANKER_CONFIG, VARIANTS, CrossEncoder, model_path
from services.rag_rerank.passages import Passage, item_passages

log = logging.getLogger(__name__)
ITEMS_TABLE = "tables/items.parquet"


def catalog_passages(table_path: str) -> dict[str, list[Passage]]:
    """item id → its passages, for every catalog item."""
    t = pq.read_table(
        table_path, columns=["item_id", "title", "brand", "description", "categories"]
    ).to_pydict()
    return {
        str(i): item_passages(str(i), ti or "", b or "", d or "", c or [])
        for i, ti, b, d, c in zip(
            t["item_id"], t["title"], t["brand"], t["description"], t["categories"], strict=True
        )
    }


def load_reranker(settings: RagRerankSettings) -> Reranker:
    """The configured version's reranker; a version without one refuses to start."""
    start = time.perf_counter()
    arts = ArtifactRepository(settings.artifact_dir).open(settings.artifact_version or None)
    if not arts.has(RERANKER_CONFIG):
        raise ArtifactIntegrityError(
            f"artifact {arts.version} has no RAG reranker ({RERANKER_CONFIG} missing): it was "
            "built from a catalog without item text, or by an older pipeline"
        )
    doc = arts.read_json(RERANKER_CONFIG)
    config = RerankConfig(
        threshold=float(doc["threshold"]),
        max_length=int(doc["max_length"]),
        default_variant=str(doc["default_variant"]),
    )
    variant = settings.variant or config.default_variant
    if variant not in VARIANTS or not arts.has(model_path(variant)):
        raise ConfigurationError(
            f"reranker variant {variant!r} is not in artifact {arts.version} "
            f"(it has: {[v for v in VARIANTS if arts.has(model_path(v))]})"
        )
    execution = load_settings(ExecutionSettings)
    encoder = CrossEncoder.load(
        arts.path,
        variant,
        config.max_length,
        intra_op_threads=settings.intra_op_threads,
        batch_size=settings.batch_size,
        execution=execution,
    )
    passages = catalog_passages(str(arts.path(ITEMS_TABLE))) if arts.has(ITEMS_TABLE) else {}
    reranker = Reranker(
        settings, arts.version, encoder, config, variant, passages, arts.manifest_sha256
    )
    warm = rag_rerank_pb2.RerankRequest(
        query="which brand makes this product",
        documents=[rag_rerank_pb2.Document(text="warm up document " * 20)] * 20,
    )
    for _ in range(3):
        reranker.rerank(warm)
    log.info(
        "rag reranker ready",
        extra={
            "version": arts.version,
            "variant": variant,
            "threshold": config.threshold,
            "items": len(passages),
            "execution_providers": providers_in_use(),
            "load_seconds": round(time.perf_counter() - start, 2),
        },
    )
    return reranker
