"""The ranker: features → multi-task predictions → GRADE weights → blended order.

One request is one list (up to a few hundred candidates): features are read in one
round trip, assembled by ``features.assemble`` (the code the model was trained through),
scored by one ONNX call, weighted by the policy (one ONNX call), blended with the
artifact's blend and relevance floor. Every served weight vector is logged with the
request id, a user bucket and whether it was explored, for later off-policy training.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.common.errors import InvalidInputError, VersionMismatchError
from services.common.generated.gensearch.common.v1 import common_pb2
from services.common.generated.gensearch.ranking.v1 import ranking_pb2
from services.common.text_encoder import TextEncoder
from services.ranking.config import RankingSettings
from services.ranking.features import (
    COLD_ITEM,
    COLD_USER,
    FeatureSpec,
    RankInputs,
    UserFeatures,
    assemble,
    history_rows,
    stack,
    user_features,
)
from services.ranking.fusion import OBJECTIVES, dirichlet_around, order
from services.ranking.metrics import CANDIDATES, COLD, EXPLORED, STAGE_SECONDS, WEIGHT
from services.ranking.model import MultiTaskModel, objective_scores
from services.ranking.policy import PolicyModel, policy_context
from services.ranking.store import FeatureReader

weight_log = logging.getLogger("gensearch.ranking.weights")
USER_BUCKETS = 1000
_SOURCES = {
    common_pb2.CANDIDATE_SOURCE_GENERATED: "generated",
    common_pb2.CANDIDATE_SOURCE_LEXICAL: "lexical",
    common_pb2.CANDIDATE_SOURCE_DENSE: "dense",
    common_pb2.CANDIDATE_SOURCE_ANN: "ann",
}


@dataclass(frozen=True, slots=True)
class FusionConfig:
    """``ranking/fusion.json``: how the objectives are blended."""

    blend: str
    floor: float
    global_weights: np.ndarray
    concentration: float

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> FusionConfig:
        if list(doc["objectives"]) != list(OBJECTIVES):
            raise ValueError(f"fusion objectives {doc['objectives']} differ from {OBJECTIVES}")
        return cls(
            str(doc["blend"]),
            float(doc["relevance_floor"]),
            np.asarray(doc["global_weights"], dtype=np.float64),
            float(doc["exploration_concentration"]),
        )


def user_bucket(user_id: str) -> str:
    """A low-cardinality, non-identifying bucket of the user id ("anonymous" when empty)."""
    if not user_id:
        return "anonymous"
    return str(int(hashlib.sha256(user_id.encode()).hexdigest()[:8], 16) % USER_BUCKETS)


class Ranker:
    """Ranks one request's candidates; torch-free."""

    def __init__(
        self,
        settings: RankingSettings,
        version: str,
        spec: FeatureSpec,
        item_vectors: np.ndarray,
        model: MultiTaskModel,
        policy: PolicyModel,
        fusion: FusionConfig,
        features: FeatureReader,
        encoder: TextEncoder | None = None,
        manifest_sha256: str = "",
        seed: int | None = None,
    ) -> None:
        self.settings = settings
        self.version = version
        self.spec = spec
        self.item_vectors = item_vectors
        self.model = model
        self.policy = policy
        self.fusion = fusion
        self.features = features
        self.encoder = encoder
        self.manifest_sha256 = manifest_sha256
        self.rng = np.random.default_rng(seed)
        self.model_names = ["ranking_mtl", "ranking_policy"]

    def validate(self, request: ranking_pb2.RankRequest) -> None:
        pinned = request.meta.artifact_version
        if pinned and pinned != self.version:
            raise VersionMismatchError(
                f"request pinned to artifact {pinned!r}, this ranker serves {self.version!r}"
            )
        n = len(request.candidates)
        if not 1 <= n <= self.settings.max_candidates:
            raise InvalidInputError(f"1..{self.settings.max_candidates} candidates per request")
        if request.k < 0:
            raise InvalidInputError("k must be >= 0")
        dim = self.item_vectors.shape[1]
        if request.query_embedding and len(request.query_embedding) != dim:
            raise InvalidInputError(
                f"query_embedding has {len(request.query_embedding)} values, expected {dim}"
            )
        if any(not c.item_id for c in request.candidates):
            raise InvalidInputError("every candidate needs an item_id")

    async def rank(self, request: ranking_pb2.RankRequest) -> ranking_pb2.RankResponse:
        self.validate(request)
        t0 = time.perf_counter()
        user, inputs = await self.request_inputs(request)
        STAGE_SECONDS.labels("features").observe(time.perf_counter() - t0)
        return self.rank_inputs(request, user, inputs, t0)

    async def request_inputs(
        self, request: ranking_pb2.RankRequest
    ) -> tuple[UserFeatures, RankInputs]:
        """The served features of a request: read (one round trip), then assembled."""
        ids = [c.item_id for c in request.candidates]
        stored_user, stored_items = await self.features.fetch(request.user.user_id, ids)
        return self.assemble_request(request, stored_user, stored_items)

    def user_for(
        self, request: ranking_pb2.RankRequest, stored: UserFeatures | None
    ) -> UserFeatures:
        """Stored features; else the request's recent items; else a cold user."""
        if stored is not None:
            return stored
        if request.user.recent_item_ids:
            return user_features(self.spec, history_rows(self.spec, request.user.recent_item_ids))
        COLD.labels("user").inc()
        return COLD_USER

    def query_vector(self, request: ranking_pb2.RankRequest) -> np.ndarray | None:
        if request.query_embedding:
            return np.asarray(request.query_embedding, dtype=np.float32)
        if request.query and self.encoder is not None:
            return self.encoder.encode([request.query])[0]
        return None

    def assemble_request(
        self,
        request: ranking_pb2.RankRequest,
        stored_user: UserFeatures | None,
        stored_items: list[tuple[float, ...] | None],
    ) -> tuple[UserFeatures, RankInputs]:
        """Defaults for what the store did not have, then ``features.assemble``."""
        user = self.user_for(request, stored_user)
        items: list[tuple[float, ...]] = []
        for values in stored_items:
            if values is None:
                COLD.labels("item").inc()
                items.append(COLD_ITEM)
            else:
                items.append(values)
        sources = [
            [_SOURCES[s] for s in c.sources if s in _SOURCES] or [_SOURCES.get(c.source, "ann")]
            for c in request.candidates
        ]
        vector = self.query_vector(request)
        return user, assemble(self.spec, self.item_vectors, user, items, sources, vector)

    def rank_inputs(
        self,
        request: ranking_pb2.RankRequest,
        user: UserFeatures,
        inputs: RankInputs,
        started: float,
    ) -> ranking_pb2.RankResponse:
        """Model, policy, blend (synchronous: numpy and ONNX)."""
        t2 = time.perf_counter()
        probs = self.model.predict(stack([inputs]))[0]
        scores = objective_scores(probs, inputs)
        t3 = time.perf_counter()
        weights = self.policy.weights(policy_context(user, request.query, scores)[None, :])[0]
        explored = bool(
            self.settings.exploration_rate > 0
            and self.rng.random() < self.settings.exploration_rate
        )
        if explored:
            weights = dirichlet_around(weights, self.fusion.concentration, 1, self.rng)[0]
            EXPLORED.inc()
        final, ranking = order(scores, weights, self.fusion.blend, self.fusion.floor)
        t4 = time.perf_counter()
        k = request.k or len(ranking)
        out = []
        for i in ranking[:k].tolist():
            c = common_pb2.Candidate()
            c.CopyFrom(request.candidates[i])
            c.final_score = float(final[i])
            del c.objective_scores[:]
            c.objective_scores.extend(
                common_pb2.ObjectiveScore(objective=o, score=float(scores[i, t]))
                for t, o in enumerate(OBJECTIVES)
            )
            out.append(c)
        STAGE_SECONDS.labels("model").observe(t3 - t2)
        STAGE_SECONDS.labels("fusion").observe(t4 - t3)
        STAGE_SECONDS.labels("total").observe(time.perf_counter() - started)
        CANDIDATES.observe(len(inputs.item_row))
        for o, w in zip(OBJECTIVES, weights, strict=True):
            WEIGHT.labels(o).observe(float(w))
        weight_log.info(
            "fusion weights served",
            extra={
                "request_id": request.meta.request_id,
                "user_bucket": user_bucket(request.user.user_id),
                "weights": {
                    o: round(float(w), 5) for o, w in zip(OBJECTIVES, weights, strict=True)
                },
                "explored": explored,
                "artifact_version": self.version,
            },
        )
        return ranking_pb2.RankResponse(
            candidates=out,
            fusion_weights=[
                ranking_pb2.ObjectiveWeight(objective=o, weight=float(w))
                for o, w in zip(OBJECTIVES, weights, strict=True)
            ],
            artifact_version=self.version,
        )
