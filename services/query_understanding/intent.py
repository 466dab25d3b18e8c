"""Category intent on ONNX Runtime: the exported head over the query embedding."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.onnx_sessions import ExecutionSettings, open_session

INTENT_MODEL_NAME = "query_intent"
INTENT_MODEL = f"models/{INTENT_MODEL_NAME}/1/model.onnx"
INTENT_FILE = "query_understanding/intent.json"
PATH_SEPARATOR = " > "


def category_label(categories: Sequence[str], level: int) -> str:
    """The category path cut at ``level`` levels, joined by ``" > "`` (shorter paths whole)."""
    return PATH_SEPARATOR.join(c.strip() for c in categories[:level])


@dataclass(frozen=True, slots=True)
class Intent:
    """One predicted category path and its calibrated probability."""

    category: str
    probability: float
    level: int


class IntentClassifier:
    """Calibrated probabilities of the level-2 and level-3 category paths of queries."""

    def __init__(
        self,
        model_path: Path,
        labels_path: Path,
        intra_op_threads: int = 1,
        execution: ExecutionSettings | None = None,
    ) -> None:
        doc = json.loads(labels_path.read_text())
        self.level2: list[str] = list(doc["level2"])
        self.level3: list[str] = list(doc["level3"])
        self.session = open_session(
            model_path,
            intra_op_threads=intra_op_threads,
            settings=execution,
            model_name=INTENT_MODEL_NAME,
        )
        self.dim = int(self.session.get_inputs()[0].shape[-1])

    @classmethod
    def load(
        cls,
        resolve: Callable[[str], Path],
        intra_op_threads: int = 1,
        execution: ExecutionSettings | None = None,
    ) -> IntentClassifier:
        """Open the head and its labels through ``resolve`` (an artifact resolver)."""
        return cls(resolve(INTENT_MODEL), resolve(INTENT_FILE), intra_op_threads, execution)

    def probabilities(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Float32 [B, n_level2] and [B, n_level3] probabilities (rows sum to 1)."""
        p2, p3 = self.session.run(
            None, {"embedding": np.ascontiguousarray(embeddings, dtype=np.float32)}
        )
        return np.asarray(p2), np.asarray(p3)

    def top(self, embeddings: np.ndarray, k: int) -> list[list[Intent]]:
        """Per query: the ``k`` most likely level-3 paths, then the most likely level-2
        path when it is not already the prefix of the first one."""
        p2, p3 = self.probabilities(embeddings)
        out: list[list[Intent]] = []
        for r2, r3 in zip(p2, p3, strict=True):
            order = np.argsort(-r3)[:k]
            found = [Intent(self.level3[i], float(r3[i]), 3) for i in order]
            best2 = int(r2.argmax())
            if not found or not found[0].category.startswith(self.level2[best2]):
                found.append(Intent(self.level2[best2], float(r2[best2]), 2))
            out.append(found)
        return out
