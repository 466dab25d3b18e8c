"""BM25 (bm25s, Lucene variant) over item text."""

from __future__ import annotations

from collections.abc import Sequence

import bm25s
import numpy as np

from models_export.evaluation.protocol import SEARCH, EvalQuery, top_k_rows

# Fields of items.parquet that BM25 indexes by default; the evaluation suite chooses among a few
# field sets on validation (see docs/results/baselines.md).
DEFAULT_FIELDS: tuple[str, ...] = ("title", "brand", "categories")


def item_text(
    title: str, brand: str, categories: Sequence[str], description: str, fields: Sequence[str]
) -> str:
    """The indexed text of one item: the chosen fields joined by newlines."""
    parts = {
        "title": title,
        "brand": brand,
        "categories": " ".join(categories),
        "description": description,
    }
    unknown = set(fields) - set(parts)
    if unknown:
        raise ValueError(f"unknown BM25 fields {sorted(unknown)}; choose from {sorted(parts)}")
    return "\n".join(parts[f] for f in fields if parts[f])


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
    ) -> None:
        self.num_items = len(texts)
        self.tie_key = tie_key
        tokens = bm25s.tokenize(list(texts), stopwords="en", show_progress=False)
        self.index = bm25s.BM25(k1=k1, b=b)
        self.index.index(tokens, show_progress=False)
        self._vocab: dict[str, int] = tokens.vocab

    def _query_tokens(self, text: str) -> list[str]:
        toks = bm25s.tokenize([text], stopwords="en", return_ids=False, show_progress=False)[0]
        return [t for t in toks if t in self._vocab]

    def scores(self, text: str) -> np.ndarray:
        """BM25 score of every item for ``text`` (zeros when no query word is in the index)."""
        toks = self._query_tokens(text)
        if not toks:
            return np.zeros(self.num_items, dtype=np.float32)
        return np.asarray(self.index.get_scores(toks), dtype=np.float32)

    def retrieve(self, queries: Sequence[EvalQuery], k: int) -> list[list[int]]:
        cache: dict[str, list[int]] = {}
        out = []
        for q in queries:
            text = q.query or ""
            if text not in cache:
                cache[text] = top_k_rows(self.scores(text)[None, :], k, self.tie_key)[0]
            out.append(cache[text])
        return out
