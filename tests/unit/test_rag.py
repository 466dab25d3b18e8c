"""RAG reranking's core pieces: passages, derived questions, DIG confidence, exact match,
the reranker's losses, selection and the "no document" threshold."""

from __future__ import annotations

import numpy as np
import pytest

from models_export.ingest import Item
from models_export.rag.evaluate import choose_threshold
from models_export.rag.lm import ConfidenceConfig, answer_in, confidence, exact_match
from models_export.rag.qa import (
    QaConfig,
    Question,
    build_qa,
    item_questions,
    item_split,
    states,
)
from models_export.rag.reranker import RerankerConfig, losses, ndcg_at
from services.rag_rerank.model import select
from services.rag_rerank.passages import item_passages, short_title


def _item(i: int, brand: str = "Acme", material: str = "brass") -> Item:
    return Item(
        item_id=str(i),
        title=f"Acme Precision Caliper Model {i} with Case.",
        brand=brand,
        description=(
            f"This caliper is made of {material}. It measures 0 to 6 inches. "
            "The display is large and easy to read. " * 3
        ),
        categories=["Industrial & Scientific", "Measuring Tools", "Calipers"],
    )


def test_passages_spec_then_bounded_description_pieces() -> None:
    item = _item(1)
    ps = item_passages(item.item_id, item.title, item.brand, item.description, item.categories)
    assert ps[0].kind == "spec"
    assert (
        ps[0].text == "Acme Precision Caliper Model 1 with Case. Brand: Acme. Category: Calipers."
    )
    assert [p.kind for p in ps[1:]] == ["description", "description"]
    head = short_title(item.title)
    for p in ps[1:]:
        assert p.text.startswith(head + ": ")
        assert len(p.text.split()) <= 48
    assert ps[1].passage_id == "1#description0"
    # no brand, no category, no description: only the title
    bare = item_passages("2", "Widget.", "", "", [])
    assert [p.text for p in bare] == ["Widget."]


def test_questions_ask_facts_the_passages_state() -> None:
    item = _item(3, material="stainless steel")
    ps = item_passages(item.item_id, item.title, item.brand, item.description, item.categories)
    facts = {kind: (q, a) for kind, q, a in item_questions(item, ps)}
    assert facts["brand"][1] == "Acme"
    assert "Acme" not in facts["brand"][0]  # the question does not give the brand away
    assert facts["category"][1] == "Calipers"
    assert facts["material"][1] == "stainless steel"  # the longest material named
    # a fact no passage states is not asked
    hidden = Item("4", "Thing.", "Acme", "", [])
    assert item_questions(hidden, item_passages("4", "Thing.", "", "", [])) == []
    assert states("Brand: Acme.", "acme") and not states("Acmeco", "Acme")


def test_qa_split_by_item_and_answerable_flags() -> None:
    items = [_item(i, brand=f"Brand{i % 7}") for i in range(300)]
    vecs = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    qa = build_qa(items, vecs, QaConfig(questions=(40, 10, 10), unanswerable_share=0.3))
    seen: dict[str, str] = {}
    for q in qa.questions:
        assert item_split(q.item_id) == q.split
        assert seen.setdefault(q.item_id, q.split) == q.split
        texts = [qa.passages[c].text for c in q.candidates]
        assert len(q.candidates) <= 8 and len(set(q.candidates)) == len(q.candidates)
        assert q.answerable == any(states(t, q.answer) for t in texts)
        own = [qa.passages[c].item_id == q.item_id for c in q.candidates]
        assert any(own) != q.source_dropped
    assert any(q.source_dropped for q in qa.questions)
    assert qa.counts()["train"]["questions"] == 40


def test_confidence_follows_the_infogain_formula() -> None:
    cfg = ConfidenceConfig(window=3, first_weights=(0.5, 0.3, 0.2), alpha=0.8)
    assert confidence([1.0, 1.0, 1.0, 1.0], cfg) == pytest.approx(1.0)
    # one token: ps = p, exponent w_1 * alpha with w normalised to 1
    assert confidence([0.5], cfg) == pytest.approx(0.5**0.8)
    p = [0.9, 0.1, 0.8, 0.7]
    smooth = [np.mean(p[0:2]), np.mean(p[0:3]), np.mean(p[1:4]), np.mean(p[2:4])]
    expected = np.exp(
        0.8 * (0.5 * np.log(smooth[0]) + 0.3 * np.log(smooth[1]) + 0.2 * np.log(smooth[2]))
        + 0.2 * np.log(smooth[3])
    )
    assert confidence(p, cfg) == pytest.approx(expected)
    # the first tokens weigh more: a low first token costs more than a low last one
    assert confidence([0.2, 0.9, 0.9, 0.9, 0.9], cfg) < confidence([0.9, 0.9, 0.9, 0.9, 0.2], cfg)


def test_exact_match_takes_the_first_clause() -> None:
    assert exact_match("SE, which is a leading manufacturer.", "SE")
    assert exact_match("The Heat-shrink tubing.", "heat-shrink Tubing")
    assert exact_match("1.5 inch", "1.5 inch")  # a decimal point is not a clause end
    assert not exact_match("not specified", "Acme")
    assert answer_in("the answer is Pro Magnets.", "Pro Magnets")
    assert not answer_in("Promagnets", "Pro Magnets")


def test_ranking_loss_prefers_the_dig_order() -> None:
    torch = pytest.importorskip("torch")
    cfg = RerankerConfig()
    dig = torch.tensor([0.6, 0.0, -0.1])
    good = torch.tensor([5.0, -5.0, -10.0])
    bad = torch.tensor([-5.0, 5.0, 6.0])
    cls_good, rank_good = losses(good, dig, cfg)
    cls_bad, rank_bad = losses(bad, dig, cfg)
    assert float(rank_good) < 0.05 < 1.0 < float(rank_bad)
    assert float(cls_good) < float(cls_bad)
    # no pair differs by more than delta: no ranking loss
    _, flat = losses(good, torch.tensor([0.01, 0.0, 0.02]), cfg)
    assert float(flat) == 0.0


class _StubLm:
    """Answers right when a passage names the brand and no distractor is given."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def prompt_ids(self, question: str, documents: list[str], lead: str = "") -> list[int]:
        self.asked.append(list(documents))
        return [len(self.asked) - 1]

    def answer(self, prompts: list[list[int]], desc: str = "") -> list[str]:
        out = []
        for (i,) in prompts:
            docs = self.asked[i]
            good = any("Brand: Acme" in d for d in docs) and not any(
                "Brand: Zed" in d for d in docs
            )
            out.append("Acme" if good else "not stated")
        return out


def test_select_and_threshold() -> None:
    scores = np.array([0.2, 2.0, -1.0, 1.0], dtype=np.float32)
    assert select(scores, 0.5, 3) == [1, 3]
    assert select(scores, 5.0, 3) == []  # no document helps
    assert select(scores, -10.0, 2) == [1, 3]
    # validation: the helpful passage scores 3, a distractor that misleads the LM 1, others
    # 0; passing the top 3 includes the distractor, a threshold between 1 and 3 does not
    passages = ["Widget. Brand: Acme.", "Widget. Brand: Zed.", "A box.", "A lid."]
    questions = [
        Question(f"v{i}", str(i), "brand", "Which brand?", "Acme", "valid", "", False, True,
                 (0, 1, 2, 3))
        for i in range(4)
    ]  # fmt: skip
    s = [np.array([3.0, 1.0, 0.0, 0.0])] * 4
    t = choose_threshold(_StubLm(), questions, passages, s, k=3, quantiles=(0.5, 0.9))  # type: ignore[arg-type]
    assert t.valid_em_without == 0.0
    assert 0.0 < t.value <= 3.0 and t.k == 3
    assert max(t.valid_em.values()) == 1.0


def test_ndcg_at() -> None:
    gains = np.array([0.0, 0.5, 0.1])
    assert ndcg_at(np.array([0.0, 1.0, 0.5]), gains, 3) == pytest.approx(1.0)
    assert ndcg_at(np.array([1.0, 0.0, 0.5]), gains, 1) == pytest.approx(0.0)
    assert ndcg_at(np.array([1.0, 0.0]), np.array([-0.2, 0.0]), 3) == 1.0  # nothing to gain
