"""Open one artifact version's ranker, its features and fusion, and warm it up."""

from __future__ import annotations

import logging
import time

import numpy as np

from services.common.artifacts import ArtifactRepository
from services.common.config import load_settings
from services.common.errors import ArtifactIntegrityError
from services.common.generated.gensearch.common.v1 import common_pb2
from services.common.generated.gensearch.ranking.v1 import ranking_pb2
from services.common.histories import USERS_TABLE, serving_histories
from services.common.logging import json_handler
from services.common.onnx_sessions import ExecutionSettings, providers_in_use
from services.common.text_encoder import TEXT_ENCODER_MODEL, TextEncoder
from services.ranking.config import RankingSettings
from services.ranking.engine import FusionConfig, Ranker, weight_log
from services.ranking.features import FEATURES_FILE, FeatureSpec
from services.ranking.model import RANKER_MODEL, MultiTaskModel
from services.ranking.policy import POLICY_MODEL, PolicyModel
from services.ranking.store import ArtifactFeatures, FeatureReader, RedisFeatures

log = logging.getLogger(__name__)
RANKING_FUSION_FILE = "ranking/fusion.json"
EMBEDDINGS = "embeddings/items.npy"


def load_ranker(settings: RankingSettings) -> Ranker:
    """The configured version's ranker; a version without one refuses to start."""
    start = time.perf_counter()
    arts = ArtifactRepository(settings.artifact_dir).open(settings.artifact_version or None)
    needed = (FEATURES_FILE, RANKER_MODEL, POLICY_MODEL, RANKING_FUSION_FILE, EMBEDDINGS)
    missing = [rel for rel in needed if not arts.has(rel)]
    if missing:
        raise ArtifactIntegrityError(
            f"artifact {arts.version} has no ranker ({', '.join(missing)} missing): it was "
            "built from a catalog without item text, or by an older pipeline"
        )
    spec = FeatureSpec.load(arts.path)
    vectors = np.load(arts.path(EMBEDDINGS), allow_pickle=False).astype(np.float32)
    features: FeatureReader
    if settings.redis_url:
        features = RedisFeatures(
            settings.redis_url, settings.redis_prefix, arts.version, settings.redis_timeout_seconds
        )
    else:
        features = ArtifactFeatures(spec, serving_histories(arts.path(USERS_TABLE)))
    execution = load_settings(ExecutionSettings)
    encoder = None
    if arts.has(TEXT_ENCODER_MODEL):
        encoder = TextEncoder.load(
            arts.path, settings.intra_op_threads, settings.encoder_max_tokens, execution
        )
    if settings.weight_log_path:
        weight_log.addHandler(
            json_handler("ranking", logging.FileHandler(settings.weight_log_path))
        )
        weight_log.propagate = False
    ranker = Ranker(
        settings,
        arts.version,
        spec,
        vectors,
        MultiTaskModel(arts.path(RANKER_MODEL), settings.intra_op_threads, execution),
        PolicyModel(arts.path(POLICY_MODEL), settings.intra_op_threads, execution),
        FusionConfig.from_dict(arts.read_json(RANKING_FUSION_FILE)),
        features,
        encoder,
        manifest_sha256=arts.manifest_sha256,
    )
    warm = ranking_pb2.RankRequest(
        query="warm up",
        candidates=[common_pb2.Candidate(item_id=i) for i in spec.item_ids[:100]],
    )
    for _ in range(3):
        user, inputs = ranker.assemble_request(warm, None, [None] * len(warm.candidates))
        ranker.rank_inputs(warm, user, inputs, time.perf_counter())
    log.info(
        "ranker loaded",
        extra={
            "execution_providers": providers_in_use(),
            "version": arts.version,
            "features": features.kind,
            "seconds": round(time.perf_counter() - start, 2),
        },
    )
    return ranker
