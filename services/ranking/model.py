"""The multi-task ranking model on ONNX Runtime (exported by ``models_export.ranking``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.ranking.features import RankInputs, stack
from services.ranking.fusion import OBJECTIVES, PREDICTED

RANKER_MODEL_NAME = "ranking_mtl"
RANKER_MODEL = f"models/{RANKER_MODEL_NAME}/1/model.onnx"
POPULARITY = OBJECTIVES.index("popularity")


class MultiTaskModel:
    """Predicts :data:`PREDICTED` for a batch of candidate lists."""

    def __init__(self, model_path: Path, intra_op_threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.session.get_inputs()]

    def predict(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Float32 [B, C, len(PREDICTED)] probabilities."""
        (probs,) = self.session.run(["probabilities"], {k: feeds[k] for k in self.inputs})
        return np.asarray(probs)


def objective_scores(predicted: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """[C, len(OBJECTIVES)]: the model's predictions and the popularity prior (the dense
    feature ``popularity``, log1p(train interactions) scaled to [0, 1])."""
    out = np.zeros((predicted.shape[0], len(OBJECTIVES)), dtype=np.float32)
    out[:, : len(PREDICTED)] = predicted
    out[:, POPULARITY] = popularity
    return out


def score_lists(model: MultiTaskModel, lists: list[RankInputs]) -> list[np.ndarray]:
    """Every list's [C, len(OBJECTIVES)] objective scores (one batched model call)."""
    if not lists:
        return []
    feeds = stack(lists)
    probs = model.predict(feeds)
    return [
        objective_scores(probs[i, : len(x.item_row)], x.dense[:, 7]) for i, x in enumerate(lists)
    ]
