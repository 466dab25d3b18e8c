"""Product documents for RAG: the passages an item contributes, built from catalog fields.

The one home of how an item becomes documents, used by the offline pipeline (questions,
DIG labels, the reranker's training pairs) and by the service (``item_ids`` resolved to
passages), so what the reranker was trained on is what it serves.

An item gives a ``spec`` passage (title, brand, leaf category) and up to
:data:`MAX_DESCRIPTION_PASSAGES` ``description`` passages: the description cut at
sentence ends into pieces of at most ``max_words`` words, each headed by the item's short
title so that a passage read alone still says which product it describes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

MAX_DESCRIPTION_PASSAGES = 2
PASSAGE_WORDS = 48
SHORT_TITLE_WORDS = 8
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True, slots=True)
class Passage:
    """One document: ``<item_id>#<kind><index>`` names it."""

    item_id: str
    kind: str  # "spec" | "description"
    index: int
    text: str

    @property
    def passage_id(self) -> str:
        return f"{self.item_id}#{self.kind}{self.index}"


def clean_title(title: str) -> str:
    """The title without the catalog's trailing full stop and doubled spaces."""
    return " ".join(title.split()).rstrip(". ")


def short_title(title: str, words: int = SHORT_TITLE_WORDS) -> str:
    """The first ``words`` words of the cleaned title."""
    return " ".join(clean_title(title).split()[:words]).rstrip(",;:-")


def leaf_category(categories: Sequence[str]) -> str:
    """The most specific category name ('' for an uncategorised item)."""
    return categories[-1].strip() if len(categories) > 1 else ""


def _pieces(text: str, max_words: int) -> list[str]:
    """Sentences packed greedily into pieces of at most ``max_words`` words (a longer
    sentence is cut)."""
    pieces: list[str] = []
    current: list[str] = []
    for sentence in _SENTENCE_END.split(" ".join(text.split())):
        words = sentence.split()
        while words:
            room = max_words - len(current)
            if len(words) > room and current:
                pieces.append(" ".join(current))
                current = []
                continue
            current.extend(words[:room])
            words = words[room:]
    if current:
        pieces.append(" ".join(current))
    return pieces


def item_passages(
    item_id: str,
    title: str,
    brand: str,
    description: str,
    categories: Sequence[str],
    max_words: int = PASSAGE_WORDS,
    max_description: int = MAX_DESCRIPTION_PASSAGES,
) -> list[Passage]:
    """The item's ``spec`` passage, then its description passages."""
    spec = clean_title(title) + "."
    if brand.strip():
        spec += f" Brand: {brand.strip()}."
    if leaf := leaf_category(categories):
        spec += f" Category: {leaf}."
    out = [Passage(item_id, "spec", 0, spec)]
    head = short_title(title)
    body_words = max(8, max_words - len(head.split()) - 1)
    for i, piece in enumerate(_pieces(description, body_words)[:max_description]):
        out.append(Passage(item_id, "description", i, f"{head}: {piece}"))
    return out
