"""The MiniLM query encoder: the same model and settings as the item embeddings.

Delegates to :func:`models_export.embeddings.embed_texts` (cached by inputs and model), so
query and item vectors come from one code path; torch is imported only when it encodes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models_export.embeddings import EmbedConfig, embed_texts
from models_export.evaluation.baselines.dense import TextEncoder


def minilm_encoder(config: EmbedConfig | None = None) -> TextEncoder:
    """A text encoder returning L2-normalised float32 all-MiniLM-L6-v2 embeddings.

    Each call loads the model, so encode all query texts in one call (DenseRetriever does).
    """
    cfg = config or EmbedConfig()

    def encode(texts: Sequence[str]) -> np.ndarray:
        return embed_texts(list(texts), cfg).vectors

    return encode
