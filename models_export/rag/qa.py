"""Derived product questions, their answers and candidate documents.

Questions are DERIVED from the catalog (there are no real product questions for it); every
reported figure says so. Each question asks for a fact stated in the item's own passages:

- ``brand``: "Which brand makes the <title without the brand>?" → the brand;
- ``category``: "What type of product is the <short title>?" → the leaf category;
- ``material``: "What material is the <short title> made of?" → a material named in the
  description but not in the title.

Candidates per question: the source item's passages, passages of the items nearest to it
in the item-embedding space (hard negatives: similar products, other brands or
materials), and random passages. A share of questions (:attr:`QaConfig.unanswerable_share`)
drop the source item's passages, so that "no document helps" is a case the reranker and
its threshold meet (such a question is still answerable when a similar item's passage
states the same fact; ``answerable`` records whether any candidate does). Questions are
split by item hash: test questions are about items the reranker never saw.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from models_export.ingest import Item
from services.query_understanding.lexicon import COMMON_MATERIALS
from services.rag_rerank.passages import Passage, item_passages, leaf_category, short_title

KINDS = ("brand", "category", "material")
#: how the answer starts, per kind: the LM's answer turn begins with it, so that a 135M
#: model completes a phrase instead of writing a sentence around the answer
LEADS = {"brand": "The brand is", "category": "The product type is", "material": "It is made of"}
SPLITS = ("train", "valid", "test")
#: brand values that name no maker
_NO_BRAND = {"", "unknown", "generic", "n/a", "na", "none", "unbranded"}


@dataclass(frozen=True, slots=True)
class QaConfig:
    """How many questions per split and how their candidate lists are made."""

    questions: tuple[int, int, int] = (500, 60, 150)  # train, valid, test
    neighbours: int = 2  # nearest items whose passages are hard negatives
    random_passages: int = 2
    max_candidates: int = 8
    unanswerable_share: float = 0.2
    seed: int = 41

    @classmethod
    def for_mode(cls, quick: bool) -> QaConfig:
        return cls(questions=(32, 8, 16)) if quick else cls()


@dataclass(frozen=True, slots=True)
class Question:
    """One derived question with its candidate passages (ids into the passage table)."""

    qid: str
    item_id: str
    kind: str
    text: str
    answer: str
    split: str
    lead: str
    source_dropped: bool  # the source item's passages were left out on purpose
    answerable: bool  # some candidate passage states the answer
    candidates: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def item_split(item_id: str) -> str:
    """train / valid / test by a stable hash of the item id (70 / 10 / 20 %)."""
    bucket = int(hashlib.sha1(f"rag:{item_id}".encode()).hexdigest()[:8], 16) % 100
    return "train" if bucket < 70 else "valid" if bucket < 80 else "test"


def _without_words(text: str, words: str) -> str:
    drop = {w.lower() for w in re.findall(r"\w+", words)}
    kept = [w for w in text.split() if re.sub(r"\W", "", w).lower() not in drop]
    return " ".join(kept)


def _material(item: Item) -> str | None:
    """The longest material phrase the description names and the title does not."""
    desc = " " + " ".join(re.findall(r"[a-z]+", item.description.lower())) + " "
    title = " " + " ".join(re.findall(r"[a-z]+", item.title.lower())) + " "
    found = [m for m in COMMON_MATERIALS if f" {m} " in desc and f" {m} " not in title]
    return max(found, key=len) if found else None


def states(text: str, answer: str) -> bool:
    """Whether ``text`` names ``answer`` as whole words (case-insensitive)."""
    return re.search(rf"(?<!\w){re.escape(answer.lower())}(?!\w)", text.lower()) is not None


def item_questions(item: Item, passages: Sequence[Passage]) -> list[tuple[str, str, str]]:
    """(kind, question, answer) for every fact one of the item's ``passages`` states."""
    out: list[tuple[str, str, str]] = []
    brand = item.brand.strip()
    if brand.lower() not in _NO_BRAND:
        subject = short_title(_without_words(item.title, brand))
        if len(subject.split()) >= 2:
            out.append(("brand", f"Which brand makes the {subject}?", brand))
    if leaf := leaf_category(item.categories):
        out.append(("category", f"What type of product is the {short_title(item.title)}?", leaf))
    if material := _material(item):
        out.append(
            ("material", f"What material is the {short_title(item.title)} made of?", material)
        )
    return [f for f in out if any(states(p.text, f[2]) for p in passages)]


@dataclass(slots=True)
class QaSet:
    """The passage table and the questions over it."""

    passages: list[Passage]
    questions: list[Question]

    def split(self, name: str) -> list[Question]:
        return [q for q in self.questions if q.split == name]

    def counts(self) -> dict[str, Any]:
        return {
            s: {
                "questions": len(qs := self.split(s)),
                "pairs": sum(len(q.candidates) for q in qs),
                "source_dropped": sum(q.source_dropped for q in qs),
                "unanswerable": sum(not q.answerable for q in qs),
                "kinds": {k: sum(q.kind == k for q in qs) for k in KINDS},
            }
            for s in SPLITS
        }


def build_qa(items: Sequence[Item], vectors: np.ndarray, config: QaConfig) -> QaSet:
    """Questions for items drawn per split, each with its candidate passages."""
    rng = np.random.default_rng(config.seed)
    passages: list[Passage] = []
    by_item: list[list[int]] = []
    for item in items:
        own = item_passages(item.item_id, item.title, item.brand, item.description, item.categories)
        by_item.append(list(range(len(passages), len(passages) + len(own))))
        passages.extend(own)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    questions: list[Question] = []
    for split, wanted in zip(SPLITS, config.questions, strict=True):
        rows = [i for i, item in enumerate(items) if item_split(item.item_id) == split]
        rng.shuffle(rows)
        made = 0
        for row in rows:
            if made >= wanted:
                break
            facts = item_questions(items[row], [passages[i] for i in by_item[row]])
            if not facts:
                continue
            kind, text, answer = facts[int(rng.integers(len(facts)))]
            dropped = bool(rng.random() < config.unanswerable_share)
            sims = unit @ unit[row]
            sims[row] = -np.inf
            near = np.argsort(-sims)[: config.neighbours]
            cands: list[int] = [] if dropped else list(by_item[row])
            for n in near:
                cands.extend(by_item[int(n)][:2])
            target = min(config.max_candidates, len(cands) + config.random_passages)
            while len(cands) < target:
                other = int(rng.integers(len(items)))
                if other != row and other not in near:
                    pool = by_item[other]
                    cands.append(pool[int(rng.integers(len(pool)))])
            cands = list(dict.fromkeys(cands))[: config.max_candidates]
            order = rng.permutation(len(cands))
            questions.append(
                Question(
                    qid=f"{split}-{made:05d}",
                    item_id=items[row].item_id,
                    kind=kind,
                    text=text,
                    answer=answer,
                    split=split,
                    lead=LEADS[kind],
                    source_dropped=dropped,
                    answerable=any(states(passages[c].text, answer) for c in cands),
                    candidates=tuple(cands[i] for i in order),
                )
            )
            made += 1
    return QaSet(passages, questions)
