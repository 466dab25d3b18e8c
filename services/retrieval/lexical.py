"""The lexical candidate source: BM25 (bm25s) over item text, with Snowball stemming.

Built offline by the artifact pipeline (``step_lexical``), stored under ``lexical/`` with
every file in the manifest, and loaded by the retrieval service through the
manifest-checking resolver like every other artifact. The same class serves the
evaluation harness's BM25 baseline, so offline and online scoring are one code path.

Stemming (Porter2 via PyStemmer) makes ``caliper`` match ``Calipers``; the query goes
through the same tokenizer, stop-word list and stemmer as the indexed text.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import bm25s
import numpy as np

from services.common.errors import ArtifactIntegrityError
from services.common.text import normalize_query

LEXICAL_DIR = "lexical"
CONFIG_FILE = f"{LEXICAL_DIR}/config.json"
#: item fields indexed by default (what the BM25 baseline chose on validation)
DEFAULT_FIELDS: tuple[str, ...] = ("title", "brand", "categories")


@dataclass(frozen=True, slots=True)
class LexicalConfig:
    """How the index was built; the query side must tokenize the same way."""

    fields: tuple[str, ...] = DEFAULT_FIELDS
    stemmer: str | None = "english"  # a Snowball language, or None for no stemming
    stopwords: str = "en"
    k1: float = 1.5
    b: float = 0.75
    # item text through the query normaliser, so that sizes and units written several
    # ways ("1/2-Inch", "12V") index as the served query spells them ("0.5 in", "12 v")
    normalize: bool = True


def _stemmer(language: str | None) -> Callable[[list[str]], list[str]] | None:
    if language is None:
        return None
    import Stemmer  # PyStemmer

    stem: Callable[[list[str]], list[str]] = Stemmer.Stemmer(language).stemWords
    return stem


class LexicalIndex:
    """BM25 over one text per item (row order = catalog rows)."""

    def __init__(self, index: bm25s.BM25, config: LexicalConfig, num_items: int) -> None:
        self.index = index
        self.config = config
        self.num_items = num_items
        self._stem = _stemmer(config.stemmer)
        self._vocab: dict[str, int] = dict(index.vocab_dict)

    @property
    def vocabulary_size(self) -> int:
        return len(self._vocab)

    @classmethod
    def build(cls, texts: Sequence[str], config: LexicalConfig | None = None) -> LexicalIndex:
        """Index ``texts`` (one per item)."""
        cfg = config or LexicalConfig()
        docs = [normalize_query(t) for t in texts] if cfg.normalize else list(texts)
        tokens = bm25s.tokenize(
            docs, stopwords=cfg.stopwords, stemmer=_stemmer(cfg.stemmer), show_progress=False
        )
        index = bm25s.BM25(k1=cfg.k1, b=cfg.b)
        index.index(tokens, show_progress=False)
        return cls(index, cfg, len(texts))

    def save(self, directory: Path) -> list[Path]:
        """Write the index and its config into ``directory``; returns the files written."""
        directory.mkdir(parents=True, exist_ok=True)
        self.index.save(str(directory), show_progress=False)
        doc = {"config": asdict(self.config), "num_items": self.num_items}
        doc["files"] = sorted(p.name for p in directory.iterdir() if p.name != "config.json")
        (directory / "config.json").write_text(json.dumps(doc, indent=2) + "\n")
        return sorted(directory.iterdir())

    @classmethod
    def load(cls, resolve: Callable[[str], Path]) -> LexicalIndex:
        """Open ``lexical/`` through ``resolve`` (``ArtifactSet.path`` checks each sha256)."""
        doc = json.loads(resolve(CONFIG_FILE).read_text())
        raw = dict(doc["config"])
        raw["fields"] = tuple(raw["fields"])
        raw.setdefault("normalize", False)  # indexes built before the option were raw
        config = LexicalConfig(**raw)
        paths = [resolve(f"{LEXICAL_DIR}/{name}") for name in doc["files"]]
        directory = paths[0].parent if paths else resolve(CONFIG_FILE).parent
        index = bm25s.BM25.load(str(directory), show_progress=False, verbosity=0)
        lexical = cls(index, config, int(doc["num_items"]))
        if int(index.scores["num_docs"]) != lexical.num_items:
            raise ArtifactIntegrityError(
                f"lexical index holds {index.scores['num_docs']} items, its config says "
                f"{lexical.num_items}"
            )
        return lexical

    def _tokens(self, text: str) -> list[str]:
        toks: list[str] = bm25s.tokenize(
            [text],
            stopwords=self.config.stopwords,
            stemmer=self._stem,
            return_ids=False,
            show_progress=False,
        )[0]
        return toks

    def query_tokens(self, text: str) -> list[str]:
        """The query's tokens that the index knows (stemmed like the items)."""
        return [t for t in self._tokens(text) if t in self._vocab]

    def all_terms_known(self, text: str) -> bool:
        """Whether every (non-stop-word) term of ``text`` occurs in the indexed items."""
        return all(t in self._vocab for t in self._tokens(text))

    def scores(self, text: str) -> np.ndarray:
        """BM25 score of every item (zeros when no query word is in the index)."""
        toks = self.query_tokens(text)
        if not toks:
            return np.zeros(self.num_items, dtype=np.float32)
        return np.array(self.index.get_scores(toks), dtype=np.float32)  # a copy: callers mask it

    def search(
        self,
        text: str,
        k: int,
        *,
        exclude: set[int] | None = None,
        allowed: np.ndarray | None = None,
    ) -> list[tuple[int, float]]:
        """Top-``k`` (row, score) with a score above 0, honouring exclusions and filters.

        Equal scores are ordered by row, so results are deterministic."""
        scores = self.scores(text)
        if allowed is not None:
            masked = np.zeros_like(scores)
            masked[allowed] = scores[allowed]
            scores = masked
        if exclude:
            scores[np.fromiter(exclude, dtype=np.int64, count=len(exclude))] = 0.0
        hits = np.flatnonzero(scores > 0)
        if len(hits) > k:
            # everything at least as good as the k-th best, then an exact ordering
            kth = np.partition(scores[hits], len(hits) - k)[len(hits) - k]
            hits = hits[scores[hits] >= kth]
        order = hits[np.lexsort((hits, -scores[hits]))][:k]
        return [(int(r), float(scores[r])) for r in order]


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
        raise ValueError(f"unknown lexical fields {sorted(unknown)}; choose from {sorted(parts)}")
    return "\n".join(parts[f] for f in fields if parts[f])
