"""Spelling correction of normalised queries against the catalog's own vocabulary.

SymSpell (symmetric delete, Damerau-OSA distance; ``symspellpy``) looks up each word in
the lexicon's word counts. The corrector is conservative: a wrong "fix" of a word the
catalog does not know costs more than a typo left in place (the lexical and dense
retrievers tolerate some noise). A word is left alone when it is

* in the catalog vocabulary, or a word of a brand name;
* holding anything but letters (model numbers, sizes, codes), or shorter than
  ``min_word_len``, or not in Latin script;
* a known general English word (the frequency dictionary shipped with symspellpy): a
  word the catalog lacks is then out of the catalog's domain, not misspelt;
* without a confident suggestion: nothing within distance 1 (distance 2 from
  ``min_len_distance2`` letters on), a best suggestion seen fewer than
  ``min_suggestion_count`` times, or one not ``min_count_ratio`` times as frequent as the
  runner-up at the same distance.

``docs/results/spelling.md`` measures these rules (``python -m models_export
evaluate-spelling``).
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from symspellpy import SymSpell, Verbosity

from services.query_understanding.lexicon import Lexicon

#: the English frequency list bundled with symspellpy (word, count per line)
ENGLISH_DICTIONARY = "frequency_dictionary_en_82_765.txt"


@dataclass(frozen=True, slots=True)
class SpellingConfig:
    """The corrector's rules (see the module docstring)."""

    max_edit_distance: int = 2
    min_word_len: int = 4
    min_len_distance2: int = 7
    min_count_ratio: float = 1.5
    min_suggestion_count: int = 1
    cache_size: int = 8192


@dataclass(frozen=True, slots=True)
class Correction:
    """A corrected query and the (original, replacement) word pairs, in query order."""

    text: str
    changes: list[tuple[str, str]] = field(default_factory=list)


def english_words() -> frozenset[str]:
    """The general English words of symspellpy's bundled frequency dictionary."""
    source = importlib.resources.files("symspellpy").joinpath(ENGLISH_DICTIONARY)
    with source.open("r", encoding="utf-8") as fh:
        return frozenset(line.split(" ", 1)[0] for line in fh if line.strip())


def _is_latin(word: str) -> bool:
    """Every letter is Latin script (ASCII, Latin-1 and the Latin Extended blocks)."""
    return word.isascii() or all(
        c < "\u0250" or "\u1e00" <= c <= "\u1eff" or "\u2c60" <= c <= "\u2c7f" for c in word
    )


class SpellCorrector:
    """Conservative per-word correction of normalised queries (see the module docstring)."""

    def __init__(
        self,
        lexicon: Lexicon,
        config: SpellingConfig | None = None,
        known_words: Collection[str] | None = None,
    ) -> None:
        """``known_words``: words never corrected though the catalog lacks them (default:
        :func:`english_words`; pass an empty set to correct every unknown word)."""
        self.config = cfg = config or SpellingConfig()
        self.vocabulary = lexicon.word_counts
        self._brand_words = frozenset(w for b in lexicon.brands for w in b.split())
        self._known = english_words() if known_words is None else known_words
        self._symspell = SymSpell(max_dictionary_edit_distance=cfg.max_edit_distance)
        for word, count in lexicon.word_counts.items():
            self._symspell.create_dictionary_entry(word, count)
        self._word = functools.lru_cache(maxsize=cfg.cache_size)(self._correct_word)

    def _leave_alone(self, word: str) -> bool:
        return (
            len(word) < self.config.min_word_len
            or word in self.vocabulary
            or not word.isalpha()
            or word in self._brand_words
            or word in self._known
            or not _is_latin(word)
        )

    def _correct_word(self, word: str) -> str:
        """The replacement of one word (``word`` itself when it is left alone)."""
        cfg = self.config
        if self._leave_alone(word):
            return word
        distance = cfg.max_edit_distance if len(word) >= cfg.min_len_distance2 else 1
        found = self._symspell.lookup(word, Verbosity.CLOSEST, max_edit_distance=distance)
        if not found:
            return word
        best = found[0]
        if best.count < cfg.min_suggestion_count:
            return word
        if len(found) > 1 and best.count < cfg.min_count_ratio * found[1].count:
            return word  # CLOSEST: the runner-up is at the same distance
        return str(best.term)

    def correct_words(self, words: Iterable[str]) -> list[str]:
        """Each word's replacement (uncached; the measurement calls this)."""
        return [self._correct_word(w) for w in words]

    def correct(self, normalized: str) -> Correction:
        """Correct a :func:`~services.common.text.normalize_query` output word by word."""
        words = normalized.split()
        fixed = [self._word(w) for w in words]
        changes = [(a, b) for a, b in zip(words, fixed, strict=True) if a != b]
        if not changes:
            return Correction(normalized)
        return Correction(" ".join(fixed), changes)
