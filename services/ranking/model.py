"""The multi-task ranking model on ONNX Runtime (exported by ``models_export.ranking``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.common.onnx_sessions import ExecutionSettings, open_session
from services.ranking.features import DENSE_FEATURES, RankInputs, stack
from services.ranking.fusion import OBJECTIVES, PREDICTED

RANKER_MODEL_NAME = "ranking_mtl"
RANKER_MODEL = f"models/{RANKER_MODEL_NAME}/1/model.onnx"
POPULARITY = OBJECTIVES.index("popularity")
RETRIEVAL = OBJECTIVES.index("retrieval")


class MultiTaskModel:
    """Predicts :data:`PREDICTED` for a batch of candidate lists."""

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
            model_name=RANKER_MODEL_NAME,
        )
        self.inputs = [i.name for i in self.session.get_inputs()]

    def predict(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Float32 [B, C, len(PREDICTED)] probabilities."""
        (probs,) = self.session.run(["probabilities"], {k: feeds[k] for k in self.inputs})
        return np.asarray(probs)


def objective_scores(predicted: np.ndarray, inputs: RankInputs) -> np.ndarray:
    """[C, len(OBJECTIVES)]: the model's predictions and the priors, read from the list's
    dense features (``popularity``; ``retrieval_rank_discount`` for ``retrieval``)."""
    out = np.zeros((predicted.shape[0], len(OBJECTIVES)), dtype=np.float32)
    out[:, : len(PREDICTED)] = predicted
    out[:, POPULARITY] = inputs.dense[:, DENSE_FEATURES.index("popularity")]
    out[:, RETRIEVAL] = inputs.dense[:, DENSE_FEATURES.index("retrieval_rank_discount")]
    return out


def score_lists(model: MultiTaskModel, lists: list[RankInputs]) -> list[np.ndarray]:
    """Every list's [C, len(OBJECTIVES)] objective scores (one batched model call)."""
    if not lists:
        return []
    feeds = stack(lists)
    probs = model.predict(feeds)
    return [objective_scores(probs[i, : len(x.item_row)], x) for i, x in enumerate(lists)]
