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
from models_export.ranking.metrics import auc, paired_bootstrap

Ranker = Callable[[Question], np.ndarray]  # scores over q.candidates


@dataclass(frozen=True, slots=True)
class Threshold:
    value: float
    k: int  # the policy passes at most k documents, each at or above ``value``
    valid_em: dict[str, float]  # candidate threshold -> EM of the policy on validation
    valid_em_without: float  # EM of always passing the top k


def _chosen(scores: Sequence[np.ndarray], k: int, threshold: float) -> list[tuple[int, ...]]:
    return [
        tuple(i for i in np.argsort(-s, kind="stable")[:k].tolist() if s[i] >= threshold)
        for s in scores
    ]


def _answers(
    lm: LabellingLm,
    questions: Sequence[Question],
    passages: Sequence[str],
    plans: dict[str, list[tuple[int, ...]]],
) -> dict[str, list[str]]:
    """The LM's answer per question under each plan (documents by candidate index), one
    generation per distinct (question, documents)."""
    prompts: dict[tuple[str, tuple[int, ...]], list[int]] = {}
    for chosen in plans.values():
        for q, c in zip(questions, chosen, strict=True):
            if (q.qid, c) not in prompts:
                docs = [passages[q.candidates[i]] for i in c]
                prompts[(q.qid, c)] = lm.prompt_ids(q.text, docs, q.lead)
    keys = list(prompts)
    got = dict(zip(keys, lm.answer([prompts[k] for k in keys], desc="answers"), strict=True))
    return {
        name: [got[(q.qid, c)] for q, c in zip(questions, chosen, strict=True)]
        for name, chosen in plans.items()
    }


def _em(preds: Sequence[str], questions: Sequence[Question]) -> np.ndarray:
    return np.array(
        [exact_match(p, q.answer) for p, q in zip(preds, questions, strict=True)], dtype=float
    )


def choose_threshold(
    lm: LabellingLm,
    questions: Sequence[Question],
    passages: Sequence[str],
    scores: Sequence[np.ndarray],
    k: int = 3,
    quantiles: Sequence[float] = (0.25, 0.5, 0.75, 0.9),
) -> Threshold:
    """The reranker score below which a document is not passed (InfoGain-RAG's filter):
    of "no threshold" and the given quantiles of the validation candidates' scores, the one
    whose top-``k`` policy gets the LM's best exact match on validation questions (ties go
    to the lower threshold: pass more)."""
    flat = np.concatenate([np.asarray(s, dtype=np.float64) for s in scores])
    floor = float(flat.min()) - 1.0  # "no threshold", as a finite number for JSON
    grid = [floor, *(float(x) for x in np.quantile(flat, quantiles))]
    plans = {f"{t:.4f}": _chosen(scores, k, t) for t in grid}
    answers = _answers(lm, questions, passages, plans)
    em = {name: float(_em(preds, questions).mean()) for name, preds in answers.items()}
    best = max(grid, key=lambda t: (em[f"{t:.4f}"], -t))
    return Threshold(round(best, 4), k, {n: round(v, 4) for n, v in em.items()}, em[f"{floor:.4f}"])


def evaluate(
    lm: LabellingLm,
    questions: Sequence[Question],
    passages: Sequence[str],
    dig: Sequence[np.ndarray],
    rankers: dict[str, Ranker],
    policy_ranker: str,
    threshold: float,
    seed: int = 5,
    helpful_dig: float = 0.05,
) -> dict[str, Any]:
    """EM / answer-in for top-1 and top-3 of every ranker, no document, and the threshold
    policy; NDCG@3 against DIG; paired bootstrap of the reranker against the baselines."""
    rng = np.random.default_rng(seed)
    scores = {
        name: [np.asarray(fn(q), dtype=np.float64) for q in questions]
        for name, fn in rankers.items()
    }
    scores["random"] = [rng.random(len(q.candidates)) for q in questions]
    plan: dict[str, list[tuple[int, ...]]] = {"none": [() for _ in questions]}
    for name, ss in scores.items():
        for k in (1, 3):
            plan[f"{name}@{k}"] = _chosen(ss, k, -np.inf)
            if name == policy_ranker:
                plan[f"{name}+threshold@{k}"] = _chosen(ss, k, threshold)
    answers = _answers(lm, questions, passages, plan)
    rows: dict[str, Any] = {}
    em_by: dict[str, np.ndarray] = {}
    for name, chosen in plan.items():
        em = em_by[name] = _em(answers[name], questions)
        hit = np.array(
            [answer_in(p, q.answer) for p, q in zip(answers[name], questions, strict=True)]
        )
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
    helpful = np.array([float(np.max(d)) > helpful_dig for d in dig])
    top_score = np.array([float(np.max(s)) for s in scores[policy_ranker]])
    answerable = np.array([q.answerable for q in questions])
    nodoc = np.array([len(c) == 0 for c in plan[f"{policy_ranker}+threshold@1"]])
    examples = [
        {
            "question": q.text,
            "answer": q.answer,
            **{name: answers[name][i] for name in ("none", f"{policy_ranker}@1", "bm25@1")},
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
            # does the best score tell questions some document helps from those none does?
            "helpful_questions": int(helpful.sum()),
            "top_score_auc_helpful_vs_not": round(auc(top_score, helpful.astype(int)), 4),
            "no_document_share_answerable": round(float(nodoc[answerable].mean()), 4)
            if answerable.any()
            else None,
            "no_document_share_unanswerable": round(float(nodoc[~answerable].mean()), 4)
            if (~answerable).any()
            else None,
        },
        "examples": examples,
    }
