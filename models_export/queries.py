"""Derived search queries for search-mode evaluation (there are no real ones for this catalog).

Two kinds, both built from the target item only and marked ``derived=True``:

* ``category`` — Ai et al., "Learning a Hierarchical Embedding Model for Personalized
  Product Search", SIGIR 2017: the words of the item's category path, lower-cased,
  deduplicated in order, stop-words removed.
* ``title`` — the harder kind: 2–4 informative title words, chosen by inverse document
  frequency over all catalog titles. Brand words, tokens with digits (model numbers)
  and words that occur in only one title (near-identifiers) are left out where enough
  other words exist, so the query describes the product instead of naming its SKU.
  The word count (2, 3 or 4) comes from a CRC32 of the item id, so it is deterministic.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa

from models_export.ingest import Item, UserSplit

# A hand-written list of English function words.
# fmt: off
STOPWORDS: frozenset[str] = frozenset(
    {
        "a", "about", "above", "after", "again", "against", "all", "also", "am", "an", "and",
        "any", "are", "as", "at", "be", "because", "been", "before", "being", "below",
        "between", "both", "but", "by", "can", "could", "did", "do", "does", "doing", "down",
        "during", "each", "either", "etc", "few", "for", "from", "further", "had", "has",
        "have", "having", "he", "her", "here", "hers", "him", "his", "how", "i", "if", "in",
        "into", "is", "it", "its", "itself", "just", "like", "may", "me", "more", "most",
        "must", "my", "no", "nor", "not", "now", "of", "off", "on", "once", "one", "only", "or",
        "other", "our", "ours", "out", "over", "own", "per", "same", "she", "should", "so",
        "some", "such", "than", "that", "the", "their", "theirs", "them", "then", "there",
        "these", "they", "this", "those", "through", "to", "too", "under", "until", "up",
        "upon", "us", "very", "via", "was", "we", "were", "what", "when", "where", "which",
        "while", "who", "whom", "why", "will", "with", "within", "without", "would", "you",
        "your", "yours",
    }
)
# fmt: on

QUERY_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("split", pa.string()),
        ("target_item_id", pa.string()),
        ("kind", pa.string()),
        ("query", pa.string()),
        ("derived", pa.bool_()),
    ]
)

_WORD = re.compile(r"[a-z0-9]+")
_ALPHA = re.compile(r"[a-z]+")
MIN_TITLE_WORDS = 2
MAX_TITLE_WORDS = 4


def tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric tokens."""
    return _WORD.findall(text.lower())


def dedup(words: Iterable[str]) -> list[str]:
    """Words in first-seen order, each once."""
    seen: set[str] = set()
    out: list[str] = []
    for w in words:
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def category_query(categories: Sequence[str]) -> str:
    """Ai et al. 2017: category-path words, lower-cased, deduplicated, stop-words removed."""
    words = (w for level in categories for w in tokenize(level))
    return " ".join(dedup(w for w in words if w not in STOPWORDS))


def _title_words(title: str) -> list[str]:
    return dedup(w for w in _ALPHA.findall(title.lower()) if len(w) >= 3 and w not in STOPWORDS)


@dataclass(frozen=True, slots=True)
class TitleIdf:
    """Document frequencies of title words over a catalog."""

    df: dict[str, int]
    n_docs: int

    @classmethod
    def fit(cls, titles: Iterable[str]) -> TitleIdf:
        df: Counter[str] = Counter()
        n = 0
        for title in titles:
            n += 1
            df.update(set(_title_words(title)))
        return cls(dict(df), n)

    def idf(self, word: str) -> float:
        return math.log((self.n_docs + 1) / (self.df.get(word, 0) + 1)) + 1.0


def title_word_count(item_id: str) -> int:
    """Deterministic 2..4 from the item id."""
    span = MAX_TITLE_WORDS - MIN_TITLE_WORDS + 1
    return MIN_TITLE_WORDS + zlib.crc32(item_id.encode()) % span


def title_query(item: Item, idf: TitleIdf) -> str | None:
    """2–4 highest-IDF non-brand title words in title order; None if fewer than 2 exist."""
    brand = set(tokenize(item.brand))
    words = [w for w in _title_words(item.title) if w not in brand]
    shared = [w for w in words if idf.df.get(w, 0) >= 2]
    pool = shared if len(shared) >= MIN_TITLE_WORDS else words
    if len(pool) < MIN_TITLE_WORDS:
        return None
    k = min(title_word_count(item.item_id), len(pool))
    order = {w: i for i, w in enumerate(pool)}
    chosen = sorted(pool, key=lambda w: (-idf.idf(w), order[w]))[:k]
    return " ".join(sorted(chosen, key=order.__getitem__))


@dataclass(slots=True)
class QuerySet:
    rows: list[dict[str, object]]
    items_without_title_query: list[str]
    items_without_category_query: list[str]

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=QUERY_SCHEMA)

    def summary(self) -> str:
        kinds = Counter(str(r["kind"]) for r in self.rows)
        return (
            f"{len(self.rows)} derived queries ({dict(sorted(kinds.items()))}); "
            f"targets without a title query: {len(self.items_without_title_query)}, "
            f"without a category query: {len(self.items_without_category_query)}"
        )


def derive_queries(items: Sequence[Item], users: Sequence[UserSplit]) -> QuerySet:
    """One category and one title query per user and split (valid, test), all derived."""
    idf = TitleIdf.fit(i.title for i in items)
    by_id = {i.item_id: i for i in items}
    per_item: dict[str, dict[str, str | None]] = {}
    for item in items:
        per_item[item.item_id] = {
            "category": category_query(item.categories) or None,
            "title": title_query(item, idf),
        }
    rows: list[dict[str, object]] = []
    for user in users:
        for split, target in (("valid", user.valid_target), ("test", user.test_target)):
            if target not in by_id:
                raise KeyError(f"user {user.user_id}: {split} target {target!r} not in items")
            for kind in ("category", "title"):
                text = per_item[target][kind]
                if text:
                    rows.append(
                        {
                            "user_id": user.user_id,
                            "split": split,
                            "target_item_id": target,
                            "kind": kind,
                            "query": text,
                            "derived": True,
                        }
                    )
    no_title = [i for i, q in per_item.items() if not q["title"]]
    no_category = [i for i, q in per_item.items() if not q["category"]]
    return QuerySet(rows, no_title, no_category)
