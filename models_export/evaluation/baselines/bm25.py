"""BM25 over item text: the served lexical index (``services.retrieval.lexical``) as a
harness baseline.

The baseline keeps the published setting (no stemming) so that ``baselines.md`` stays
reproducible; the served index stems (see ``docs/results/hybrid_retrieval.md`` for the
served source's own figures).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models_export.evaluation.protocol import SEARCH, EvalQuery, top_k_rows
from services.retrieval.lexical import DEFAULT_FIELDS, LexicalConfig, LexicalIndex, item_text

__all__ = ["DEFAULT_FIELDS", "Bm25Retriever", "item_text"]


class Bm25Retriever:
    """Lexical search; every item is scored, so equal scores are ordered by ``tie_key``."""

    name = "bm25"
    modes = frozenset({SEARCH})

    def __init__(
        self,
        texts: Sequence[str],
        k1: float = 1.5,
        b: float = 0.75,
        tie_key: np.ndarray | None = None,
        stemmer: str | None = None,
    ) -> None:
        self.num_items = len(texts)
        self.tie_key = tie_key
        config = LexicalConfig(stemmer=stemmer, k1=k1, b=b)
        self.index = LexicalIndex.build(list(texts), config)

    def scores(self, text: str) -> np.ndarray:
        """BM25 score of every item for ``text`` (zeros when no query word is in the index)."""
        return self.index.scores(text)

    def retrieve(self, queries: Sequence[EvalQuery], k: int) -> list[list[int]]:
        cache: dict[str, list[int]] = {}
        out = []
        for q in queries:
            text = q.query or ""
            if text not in cache:
                cache[text] = top_k_rows(self.scores(text)[None, :], k, self.tie_key)[0]
            out.append(cache[text])
        return out
