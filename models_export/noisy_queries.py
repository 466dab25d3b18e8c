"""Noisy variants of derived queries, made reproducibly, for robustness measurements.

People do not type category paths. Each variant changes a derived query the way real
queries differ from clean ones, one kind of noise at a time so each is measured apart:

* ``typo``: 1 or 2 character edits (substitution, deletion, insertion or swap of two
  neighbouring letters) in words of at least 4 letters;
* ``drop``: one word left out (two when the query has five or more);
* ``shuffle``: the words in another order;
* ``synonym``: one word replaced by its nearest neighbour in the catalog's OWN vocabulary
  (words of the titles and category paths), by cosine of their MiniLM embeddings, above a
  similarity floor and not sharing the word's first four letters (so not a mere inflection).

Every random choice comes from ``numpy.random.default_rng((seed, case_index, kind))``, so a
query's noisy variant does not depend on which other queries were made.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

NOISE_KINDS: tuple[str, ...] = ("typo", "drop", "shuffle", "synonym")
_KIND_ID = {k: i for i, k in enumerate(NOISE_KINDS)}
_WORD = re.compile(r"[a-z]+")
LETTERS = string.ascii_lowercase
SYNONYM_MIN_COSINE = 0.55
VOCAB_MIN_COUNT = 3

Encode = Callable[[Sequence[str]], np.ndarray]  # texts -> L2-normalised (n, d)


def _typo(word: str, rng: np.random.Generator) -> str:
    op = int(rng.integers(4))
    i = int(rng.integers(len(word)))
    if op == 0:  # substitution by another letter
        choices = [c for c in LETTERS if c != word[i]]
        return word[:i] + choices[int(rng.integers(len(choices)))] + word[i + 1 :]
    if op == 1:  # deletion
        return word[:i] + word[i + 1 :]
    if op == 2:  # insertion
        return word[:i] + LETTERS[int(rng.integers(26))] + word[i:]
    j = min(i, len(word) - 2)  # swap of neighbours (a different letter pair when possible)
    return word[:j] + word[j + 1] + word[j] + word[j + 2 :]


def add_typos(words: list[str], rng: np.random.Generator) -> list[str]:
    """1 or 2 edits, each in a random word of at least 4 letters (unchanged if none)."""
    out = list(words)
    eligible = [i for i, w in enumerate(out) if len(w) >= 4 and w.isalpha()]
    if not eligible:
        return out
    for _ in range(1 + int(rng.integers(2))):
        i = eligible[int(rng.integers(len(eligible)))]
        out[i] = _typo(out[i], rng)
    return out


def drop_words(words: list[str], rng: np.random.Generator) -> list[str]:
    """One word left out (two from five words on); a one-word query is kept."""
    if len(words) < 2:
        return list(words)
    n_drop = 2 if len(words) >= 5 else 1
    gone = set(rng.choice(len(words), size=n_drop, replace=False).tolist())
    return [w for i, w in enumerate(words) if i not in gone]


def shuffle_words(words: list[str], rng: np.random.Generator) -> list[str]:
    """The words in another order (a different one whenever the words allow it)."""
    if len(set(words)) < 2:
        return list(words)
    for _ in range(10):
        order = rng.permutation(len(words)).tolist()
        out = [words[i] for i in order]
        if out != words:
            return out
    return list(reversed(words))


def swap_synonym(words: list[str], rng: np.random.Generator, synonyms: dict[str, str]) -> list[str]:
    """One word that has a catalog synonym replaced by it (unchanged if none has one)."""
    candidates = [i for i, w in enumerate(words) if w in synonyms]
    if not candidates:
        return list(words)
    i = candidates[int(rng.integers(len(candidates)))]
    out = list(words)
    out[i] = synonyms[out[i]]
    return out


def catalog_vocabulary(texts: Sequence[str], min_count: int = VOCAB_MIN_COUNT) -> list[str]:
    """Alphabetic words of at least 3 letters found in at least ``min_count`` texts."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(set(_WORD.findall(text.lower())))
    return sorted(w for w, c in counts.items() if c >= min_count and len(w) >= 3)


def build_synonyms(
    words: Sequence[str],
    vocabulary: Sequence[str],
    encode: Encode,
    min_cosine: float = SYNONYM_MIN_COSINE,
) -> dict[str, str]:
    """For each of ``words``: its nearest vocabulary word by embedding cosine, when at least
    ``min_cosine`` and not an inflection of it (same first four letters)."""
    vocab = [v for v in vocabulary]
    if not vocab or not words:
        return {}
    wanted = sorted(set(words))
    vocab_vecs = encode(vocab)
    word_vecs = encode(wanted)
    sims = word_vecs @ vocab_vecs.T
    out: dict[str, str] = {}
    for w, row in zip(wanted, sims, strict=True):
        for j in np.argsort(-row)[:20].tolist():
            cand = vocab[j]
            if row[j] < min_cosine:
                break
            if cand[:4] == w[:4]:
                continue
            out[w] = cand
            break
    return out


def noisy_variant(
    text: str, kind: str, seed: int, case_index: int, synonyms: dict[str, str] | None = None
) -> str:
    """The ``kind`` variant of the query ``text`` (see the module docstring)."""
    if kind not in _KIND_ID:
        raise ValueError(f"unknown noise kind {kind!r}; choose from {NOISE_KINDS}")
    rng = np.random.default_rng((seed, case_index, _KIND_ID[kind]))
    words = text.split()
    if kind == "typo":
        out = add_typos(words, rng)
    elif kind == "drop":
        out = drop_words(words, rng)
    elif kind == "shuffle":
        out = shuffle_words(words, rng)
    else:
        out = swap_synonym(words, rng, synonyms or {})
    return " ".join(out)
