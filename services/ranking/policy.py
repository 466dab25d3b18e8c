"""The GRADE policy's input: a user-and-query context vector (one home for training and
serving), and the ONNX policy that maps it to objective weights on the simplex."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from services.common.onnx_sessions import ExecutionSettings, open_session
from services.ranking.features import MAX_HISTORY_COUNTED, UserFeatures
from services.ranking.fusion import OBJECTIVES

POLICY_MODEL_NAME = "ranking_policy"
POLICY_MODEL = f"models/{POLICY_MODEL_NAME}/1/model.onnx"
CONTEXT_FEATURES: tuple[str, ...] = (
    "has_query",
    "query_words",  # min(words, 8) / 8
    "history_length",  # log1p(len) / log1p(MAX_HISTORY_COUNTED)
    "cold_user",
    "category_entropy",  # entropy of the history's leaf categories / log(len)
    "top_category_share",
    "top_brand_share",
    "distinct_brand_share",
    # the list's predictions: mean and max of each objective
    *(f"{stat}_{o}" for o in OBJECTIVES for stat in ("mean", "max")),
)
NUM_CONTEXT = len(CONTEXT_FEATURES)


def policy_context(user: UserFeatures, query: str, scores: np.ndarray) -> np.ndarray:
    """Float32 [NUM_CONTEXT]: who asks, what, and what the candidate list looks like
    (``scores`` [C, len(OBJECTIVES)])."""
    n = user.length
    words = len(query.split())
    out = [
        1.0 if words else 0.0,
        min(words, 8) / 8.0,
        math.log1p(n) / math.log1p(MAX_HISTORY_COUNTED),
        0.0 if n else 1.0,
    ]
    if n:
        counts = np.asarray(list(user.cat3.values()), dtype=np.float64)
        p = counts / max(counts.sum(), 1.0)
        entropy = float(-(p * np.log(p)).sum())
        out += [
            entropy / math.log(n) if n > 1 else 0.0,
            float(counts.max() / n) if len(counts) else 0.0,
            max(user.brand.values()) / n if user.brand else 0.0,
            len(user.brand) / n,
        ]
    else:
        out += [0.0, 0.0, 0.0, 0.0]
    if len(scores):
        for t in range(len(OBJECTIVES)):
            out += [float(scores[:, t].mean()), float(scores[:, t].max())]
    else:
        out += [0.0] * (2 * len(OBJECTIVES))
    return np.asarray(out, dtype=np.float32)


class PolicyModel:
    """The exported policy network: context [B, NUM_CONTEXT] -> weights [B, T] (rows on
    the simplex, in the order of :data:`OBJECTIVES`)."""

    def __init__(
        self,
        model_path: Path,
        intra_op_threads: int = 1,
        execution: ExecutionSettings | None = None,
    ) -> None:
        self.session = open_session(
            model_path,
            intra_op_threads=intra_op_threads,
            settings=execution,
            model_name=POLICY_MODEL_NAME,
        )

    def weights(self, context: np.ndarray) -> np.ndarray:
        (w,) = self.session.run(["weights"], {"context": context.astype(np.float32)})
        return np.asarray(w, dtype=np.float64)
