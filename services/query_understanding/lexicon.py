"""The query-understanding lexicon, mined from the catalog: words, brands, categories,
materials and sizes, all in :func:`~services.common.text.normalize_query` form.

Nothing here is specific to one catalog: every vocabulary comes from the items' text. The
only built-in knowledge is :data:`COMMON_MATERIALS`, general e-commerce material names,
of which the lexicon keeps those the catalog mentions.

Built offline by the artifact pipeline (``Lexicon.save`` into ``<version>/query_understanding``)
and opened by the service through the manifest-checking resolver (``Lexicon.load``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.errors import ArtifactIntegrityError
from services.common.text import SIZE_RE, normalize_query

LEXICON_DIR = "query_understanding"
LEXICON_FILE = f"{LEXICON_DIR}/lexicon.json"
FORMAT_VERSION = 1

#: a description word enters the vocabulary from this many occurrences (title, brand and
#: category words from one): descriptions hold the catalog's own typos and run-on tokens
DESCRIPTION_MIN_COUNT = 3
#: a category level name of more words is a stray sentence, not a category
MAX_CATEGORY_WORDS = 6
#: function words left out of category terms (they are not categories of anything)
_FUNCTION_WORDS = frozenset(
    {"a", "an", "and", "as", "at", "by", "for", "from", "in", "of", "on", "or", "the", "to"}
    | {"with", "without", "other"}
)

#: general material names (both spellings where they differ); kept when the catalog has them
COMMON_MATERIALS: tuple[str, ...] = (
    "stainless steel", "carbon steel", "alloy steel", "tool steel", "galvanized steel", "steel",
    "aluminum", "aluminium", "anodized aluminum", "brass", "bronze", "copper", "iron",
    "cast iron", "titanium", "zinc", "nickel", "chrome", "tungsten", "tungsten carbide",
    "carbide", "tin", "silver", "gold", "plastic", "abs", "pla", "petg", "pvc", "cpvc",
    "polycarbonate", "polypropylene", "polyethylene", "hdpe", "ldpe", "acrylic", "nylon",
    "ptfe", "teflon", "delrin", "acetal", "peek", "polyurethane", "polyester", "polystyrene",
    "vinyl", "epoxy", "resin", "rubber", "silicone", "neoprene", "nitrile", "latex", "viton",
    "epdm", "foam", "glass", "borosilicate glass", "fiberglass", "fibreglass", "carbon fiber",
    "carbon fibre", "kevlar", "ceramic", "porcelain", "stone", "granite", "marble", "concrete",
    "wood", "bamboo", "oak", "pine", "walnut", "maple", "plywood", "mdf", "cork", "paper",
    "cardboard", "cotton", "wool", "linen", "silk", "leather", "faux leather", "felt", "canvas",
    "denim", "microfiber", "microfibre", "spandex", "velvet", "jute", "wax", "graphite",
    "neodymium",
)  # fmt: skip


@dataclass(frozen=True)
class Lexicon:
    """Normalised vocabularies of one catalog."""

    word_counts: dict[str, int]  # catalog words -> occurrences (titles, brands, categories, ...)
    brands: list[str]  # brand names, multi-word allowed
    category_terms: list[str]  # category level names and their words
    materials: list[str]  # material words/phrases the catalog mentions
    sizes: list[str]  # canonical sizes found in titles ("0.5 in", "12 x 18")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "word_counts": dict(sorted(self.word_counts.items())),
            "brands": self.brands,
            "category_terms": self.category_terms,
            "materials": self.materials,
            "sizes": self.sizes,
        }

    @classmethod
    def from_dict(cls, doc: Any) -> Lexicon:
        """The lexicon in ``doc``; ArtifactIntegrityError when it is not one."""
        try:
            if doc["format"] != FORMAT_VERSION:
                raise ValueError(f"format {doc['format']!r}, expected {FORMAT_VERSION}")
            counts = {str(w): int(c) for w, c in doc["word_counts"].items()}
            lists = {
                name: [str(v) for v in doc[name]]
                for name in ("brands", "category_terms", "materials", "sizes")
            }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactIntegrityError(f"not a query-understanding lexicon: {exc}") from exc
        return cls(word_counts=counts, **lists)

    def save(self, directory: Path) -> list[Path]:
        """Write ``lexicon.json`` into ``directory`` (``<version>/query_understanding``);
        returns the files written."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / Path(LEXICON_FILE).name
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n")
        return [path]

    @classmethod
    def load(cls, resolve: Callable[[str], Path]) -> Lexicon:
        """Open :data:`LEXICON_FILE` through ``resolve`` (``ArtifactSet.path`` checks the
        file's sha256)."""
        path = resolve(LEXICON_FILE)
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactIntegrityError(f"unreadable lexicon {path}: {exc}") from exc
        return cls.from_dict(doc)

    @property
    def vocabulary_size(self) -> int:
        return len(self.word_counts)


_LETTER_RUN = re.compile(r"[^\W\d_]{2,}")


def _words(normalized: str) -> list[str]:
    """Vocabulary words of a normalised text: its alphabetic words and the letter runs of
    its codes (``meltink3d`` -> ``meltink``); numbers are no vocabulary."""
    out: list[str] = []
    for word in normalized.split():
        if word.isalpha():
            out.append(word)
        else:
            out.extend(_LETTER_RUN.findall(word))
    return out


def _is_category_name(name: str) -> bool:
    """A plausible category level: a few words, not led by a bare number (``40 x nh amp``
    or ``1 pack`` is a stray product detail, ``3d printers`` a category)."""
    words = name.split()
    return 0 < len(words) <= MAX_CATEGORY_WORDS and not words[0].replace(".", "").isdigit()


def _present(phrases: Iterable[str], texts: Iterable[str]) -> list[str]:
    """The ``phrases`` that occur as whole words in one of the normalised ``texts``."""
    corpus = " " + " | ".join(texts) + " "  # '|' never survives normalisation
    return sorted({p for p in phrases if p and f" {p} " in corpus})


def mine_lexicon(
    titles: Sequence[str],
    brands: Sequence[str],
    categories: Sequence[Sequence[str]],
    descriptions: Sequence[str],
    *,
    description_min_count: int = DESCRIPTION_MIN_COUNT,
) -> Lexicon:
    """Mine a :class:`Lexicon` from the catalog's fields (one entry per item, any order)."""
    norm_titles = [normalize_query(t) for t in titles]
    core: Counter[str] = Counter()  # titles, brands and categories: every word counts
    norm_brands = [normalize_query(b) for b in brands]
    for text in [*norm_titles, *norm_brands]:
        core.update(_words(text))
    levels = sorted(
        {
            name
            for path in categories
            for name in (normalize_query(level) for level in path)
            if _is_category_name(name)
        }
    )
    for path in categories:
        for level in path:
            core.update(_words(normalize_query(level)))
    described: Counter[str] = Counter()
    norm_descriptions = [normalize_query(d) for d in descriptions]
    for text in norm_descriptions:
        described.update(w for w in text.split() if w.isalpha())
    counts = core + described
    word_counts = {
        w: c for w, c in counts.items() if w in core or described[w] >= description_min_count
    }
    level_words = {w for lv in levels for w in lv.split() if w.isalpha()}
    category_terms = sorted(set(levels) | {w for w in level_words if w not in _FUNCTION_WORDS})
    materials = _present(
        {normalize_query(m) for m in COMMON_MATERIALS},
        [*norm_titles, *levels, *norm_descriptions],
    )
    sizes = sorted({m.group() for t in norm_titles for m in SIZE_RE.finditer(t)})
    return Lexicon(
        word_counts=dict(sorted(word_counts.items())),
        brands=sorted({b for b in norm_brands if b}),
        category_terms=category_terms,
        materials=materials,
        sizes=sizes,
    )
