"""Attributes of a normalised query: brands, categories, materials and sizes of the catalog.

One Aho-Corasick automaton (``pyahocorasick``) holds every phrase of the lexicon; sizes are
also recognised by pattern (:data:`~services.common.text.SIZE_RE`), so a size the catalog
never mentions (``7 in``) is still a size. Matches are whole words only; where matches
overlap, the longest wins (ties: the leftmost), and a phrase that belongs to several
attributes (a brand that is also a category word) yields one attribute per name.

Category names are mostly plural (``Calipers``) where queries are often singular, so a
category term is also found in its singular form (``caliper``); the attribute's value is
then the lexicon's term (``calipers``), its span where the query says it.
"""

from __future__ import annotations

from dataclasses import dataclass

import ahocorasick

from services.common.text import SIZE_RE
from services.query_understanding.lexicon import Lexicon

BRAND, CATEGORY, MATERIAL, SIZE = "brand", "category", "material", "size"
#: order of attributes on one span
ATTRIBUTE_NAMES: tuple[str, ...] = (BRAND, MATERIAL, SIZE, CATEGORY)


_Found = tuple[tuple[str, str], ...]  # (attribute name, value) of one phrase


def singular(phrase: str) -> str:
    """``phrase`` with its last word in a simple English singular (``wire brushes`` ->
    ``wire brush``, ``batteries`` -> ``battery``, ``calipers`` -> ``caliper``)."""
    head, _, last = phrase.rpartition(" ")
    if len(last) < 4 or not last.endswith("s") or last.endswith(("ss", "us", "is")):
        return phrase
    if last.endswith("ies"):
        last = last[:-3] + "y"
    elif last.endswith(("ches", "shes", "xes", "sses", "zes")):
        last = last[:-2]
    else:
        last = last[:-1]
    return f"{head} {last}" if head else last


@dataclass(frozen=True, slots=True)
class Attribute:
    """``value`` (a lexicon term) found at ``normalized[start:end]``."""

    name: str  # one of ATTRIBUTE_NAMES
    value: str
    start: int
    end: int


class AttributeMatcher:
    """Finds the lexicon's brands, categories, materials and sizes in normalised queries."""

    def __init__(self, lexicon: Lexicon) -> None:
        names: dict[str, list[str]] = {}
        sources = (
            (BRAND, lexicon.brands),
            (MATERIAL, lexicon.materials),
            (SIZE, lexicon.sizes),
            (CATEGORY, lexicon.category_terms),
        )
        for name, phrases in sources:
            for phrase in phrases:
                if phrase and name not in names.setdefault(phrase, []):
                    names[phrase].append(name)
        singulars: dict[str, str] = {}
        for term in lexicon.category_terms:
            one = singular(term)
            if one != term and one not in names:
                singulars.setdefault(one, term)
        self._automaton = ahocorasick.Automaton()
        for phrase, found in names.items():
            self._automaton.add_word(phrase, (len(phrase), tuple((n, phrase) for n in found)))
        for one, term in singulars.items():
            self._automaton.add_word(one, (len(one), ((CATEGORY, term),)))
        self.phrases = len(names) + len(singulars)
        if self.phrases:
            self._automaton.make_automaton()

    def _candidates(self, text: str) -> list[tuple[int, int, _Found]]:
        """Every whole-word match as (start, end, ((name, value), ...))."""
        out: list[tuple[int, int, _Found]] = []
        if self.phrases:
            n = len(text)
            for last, (length, names) in self._automaton.iter(text):
                start, end = last - length + 1, last + 1
                if (start == 0 or text[start - 1] == " ") and (end == n or text[end] == " "):
                    out.append((start, end, names))
        if any(c.isdigit() for c in text):
            out.extend((m.start(), m.end(), ((SIZE, m[0]),)) for m in SIZE_RE.finditer(text))
        return out

    def match(self, normalized: str) -> list[Attribute]:
        """Attributes of a :func:`~services.common.text.normalize_query` output, in text order."""
        candidates = self._candidates(normalized)
        if not candidates:
            return []
        # longest first, then leftmost; keep a match when it overlaps none kept before
        candidates.sort(key=lambda c: (c[0] - c[1], c[0]))
        kept: list[tuple[int, int, _Found]] = []
        for start, end, found in candidates:
            if all(end <= s or start >= e for s, e, _ in kept):
                kept.append((start, end, found))
        kept.sort(key=lambda c: c[0])
        return [
            Attribute(name, value, start, end)
            for start, end, found in kept
            for name, value in found
        ]
