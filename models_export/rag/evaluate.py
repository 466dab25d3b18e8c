"""The InfoGain-RAG style evaluation: which documents does each method hand the LM, and
does the LM then answer right?

Methods rank each test question's candidate passages: (b) random, (c) BM25 over the
passage collection, (d) the MiniLM bi-encoder (the artifact's query encoder, cosine), (e)
the DIG reranker (fp32 and int8 ONNX, through the served :class:`CrossEncoder`); (a) gives
no document. For each, the LM answers with the top-1 and the top-3 passages; we report
exact match (first clause, normalised) and answer-in-output, NDCG@3 of the ranking against
the held-out DIG labels, and the "no document" policy: pass nothing when the reranker's
best score is under the threshold chosen on validation questions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models_export.rag.lm import LabellingLm, answer_in, exact_match
from models_export.rag.qa import Question
from models_export.rag.reranker import ndcg_at
from models_export.ranking.metrics import paired_bootstrap

Ranker = Callable[[Question], np.ndarray]  # scores over q.candidates


@dataclass(frozen=True, slots=True)
class Threshold:
    value: float
    valid_gain_policy: float  # mean DIG of what the policy passes (0 for "none")
    valid_gain_top1: float  # mean DIG of always passing the top-1


def choose_threshold(scores: Sequence[np.ndarray], dig: Sequence[np.ndarray]) -> Threshold:
    """The score below which no document is passed: maximises the mean DIG of the top-1
    document on validation questions, a withheld document counting 0."""
    top = np.array([float(s.max()) for s in scores])
    gain = np.array([float(d[int(np.argmax(s))]) for s, d in zip(scores, dig, strict=True)])
    best_t, best_v = -np.inf, float(gain.mean())
    for t in np.unique(top):
        v = float(np.where(top >= t, gain, 0.0).mean())
        if v > best_v + 1e-12:
            best_t, best_v = float(t), v
    if best_t == -np.inf:
        best_t = float(top.min()) - 1.0
    return Threshold(best_t, best_v, float(gain.mean()))


def evaluate(
    lm: LabellingLm,
    questions: Sequence[Question],
    passages: Sequence[str],
    dig: Sequence[np.ndarray],
    rankers: dict[str, Ranker],
    policy_ranker: str,
    threshold: float,
    seed: int = 5,
) -> dict[str, Any]:
    """EM / answer-in for top-1 and top-3 of every ranker, no document, and the threshold
    policy; NDCG@3 against DIG; paired bootstrap of the reranker against the baselines."""
    rng = np.random.default_rng(seed)
    scores = {
        name: [np.asarray(fn(q), dtype=np.float64) for q in questions]
        for name, fn in rankers.items()
    }
    scores["random"] = [rng.random(len(q.candidates)) for q in questions]
    prompts: dict[tuple[str, tuple[int, ...]], list[int]] = {}
    plan: dict[str, list[tuple[int, ...]]] = {}

    def ask(name: str, chosen: list[tuple[int, ...]]) -> None:
        plan[name] = chosen
        for q, c in zip(questions, chosen, strict=True):
            key = (q.qid, c)
            if key not in prompts:
                docs = [passages[q.candidates[i]] for i in c]
                prompts[key] = lm.prompt_ids(q.text, docs, q.lead)

    ask("none", [() for _ in questions])
    for name, ss in scores.items():
        for k in (1, 3):
            ask(f"{name}@{k}", [tuple(np.argsort(-s, kind="stable")[:k].tolist()) for s in ss])
    pol = scores[policy_ranker]
    for k in (1, 3):
        ask(
            f"{policy_ranker}+threshold@{k}",
            [
                tuple(i for i in np.argsort(-s, kind="stable")[:k].tolist() if s[i] >= threshold)
                for s in pol
            ],
        )
    keys = list(prompts)
    answers = dict(zip(keys, lm.answer([prompts[k] for k in keys], desc="EM answers"), strict=True))
    rows: dict[str, Any] = {}
    em_by: dict[str, np.ndarray] = {}
    for name, chosen in plan.items():
        preds = [answers[(q.qid, c)] for q, c in zip(questions, chosen, strict=True)]
        em = np.array([exact_match(p, q.answer) for p, q in zip(preds, questions, strict=True)])
        hit = np.array([answer_in(p, q.answer) for p, q in zip(preds, questions, strict=True)])
        em_by[name] = em.astype(np.float64)
        rows[name] = {
            "em": round(float(em.mean()), 4),
            "answer_in": round(float(hit.mean()), 4),
            "no_document_share": round(float(np.mean([len(c) == 0 for c in chosen])), 4),
            "em_by_kind": {
                kind: round(float(em[[q.kind == kind for q in questions]].mean()), 4)
                for kind in sorted({q.kind for q in questions})
            },
        }
    ndcg = {
        name: round(float(np.mean([ndcg_at(s, d, 3) for s, d in zip(ss, dig, strict=True)])), 4)
        for name, ss in scores.items()
    }
    ndcg["oracle_dig"] = 1.0
    boot = {}
    for base in ("bm25", "bi_encoder", "random"):
        for k in (1, 3):
            mine, theirs = f"{policy_ranker}@{k}", f"{base}@{k}"
            if mine in em_by and theirs in em_by:
                mean, lo, hi = paired_bootstrap(em_by[mine], em_by[theirs])
                boot[f"{mine} - {theirs}"] = {
                    "mean": round(mean, 4),
                    "low": round(lo, 4),
                    "high": round(hi, 4),
                }
    answerable = np.array([q.answerable for q in questions])
    nodoc = np.array([len(c) == 0 for c in plan[f"{policy_ranker}+threshold@1"]])
    examples = [
        {
            "question": q.text,
            "answer": q.answer,
            "none": answers[(q.qid, ())],
            f"{policy_ranker}@1": answers[(q.qid, plan[f"{policy_ranker}@1"][i])],
            "bm25@1": answers[(q.qid, plan["bm25@1"][i])],
        }
        for i, q in enumerate(questions[:8])
    ]
    return {
        "questions": len(questions),
        "queries_derived": True,
        "rows": rows,
        "ndcg@3_vs_dig": ndcg,
        "bootstrap_em": boot,
        "threshold_policy": {
            "threshold": round(threshold, 4),
            "no_document_share_answerable": round(float(nodoc[answerable].mean()), 4)
            if answerable.any()
            else None,
            "no_document_share_unanswerable": round(float(nodoc[~answerable].mean()), 4)
            if (~answerable).any()
            else None,
        },
        "generations": len(keys),
        "examples": examples,
    }
