"""Artifact step ``rag``: derived questions, DIG labels, the reranker, its evaluation.

Writes ``rag/questions.jsonl`` (every question with its candidate passages and their DIG),
``models/rag_reranker`` and ``models/rag_reranker_int8`` (ONNX, Triton layout),
``rag/tokenizer.json``, ``rag/reranker.json`` (maximum length, the "no document"
threshold, the served variant) and ``rag/eval.json``. DIG confidences are cached under
``.cache/rag`` (keyed by the LM file, the prompt version, the prompt and the answer), so
a rebuild labels only new pairs. Skipped without item text (no passages to rank).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models_export.rag.evaluate import choose_threshold, evaluate
from models_export.rag.lm import LabellingLm, LmConfig
from models_export.rag.qa import QaConfig, QaSet, Question, build_qa
from models_export.rag.report import RAG_EVAL_FILE
from models_export.rag.reranker import Group, RerankerConfig, export_reranker, train_reranker
from services.common.text_encoder import TEXT_ENCODER_MODEL, TextEncoder
from services.rag_rerank.model import RERANKER_CONFIG, CrossEncoder
from services.retrieval.lexical import LexicalConfig, LexicalIndex

if TYPE_CHECKING:
    from models_export.pipeline import BuildContext

QUESTIONS_FILE = "rag/questions.jsonl"
CACHE_DIR = Path(".cache/rag")
#: served by default: int8 (its accuracy cost is in rag/eval.json)
DEFAULT_VARIANT = "int8"


def label_dig(lm: LabellingLm, qa: QaSet, questions: list[Question]) -> list[np.ndarray]:
    """DIG(d|x) = p(y|x,d) - p(y|x) for every candidate of every question."""
    prompts: list[list[int]] = []
    answers: list[str] = []
    for q in questions:
        prompts.append(lm.prompt_ids(q.text, [], q.lead))
        answers.append(q.answer)
        for c in q.candidates:
            prompts.append(lm.prompt_ids(q.text, [qa.passages[c].text], q.lead))
            answers.append(q.answer)
    conf = lm.confidences(prompts, answers, desc="DIG labels")
    out, i = [], 0
    for q in questions:
        n = len(q.candidates)
        out.append(conf[i + 1 : i + 1 + n] - conf[i])
        i += n + 1
    return out


def step_rag(ctx: BuildContext) -> str:
    """Label, train, export and evaluate the RAG reranker."""
    if not ctx.has_text:
        return "skipped: the catalog has no item text (no product documents)"
    t0 = time.perf_counter()
    vdir = ctx.version_dir
    if not (vdir / TEXT_ENCODER_MODEL).is_file():
        return f"skipped: the version has no {TEXT_ENCODER_MODEL} (the bi-encoder baseline)"
    qa_config = QaConfig.for_mode(ctx.quick)
    qa = build_qa(ctx.items(), ctx.item_embeddings(), qa_config)
    lm = LabellingLm(LmConfig(), cache_dir=CACHE_DIR)
    t_label = time.perf_counter()
    splits = {s: qa.split(s) for s in ("train", "valid", "test")}
    dig = {s: label_dig(lm, qa, qs) for s, qs in splits.items()}
    lm.save_cache()
    label_seconds = time.perf_counter() - t_label
    pairs = sum(len(q.candidates) + 1 for qs in splits.values() for q in qs)
    with ctx.path(QUESTIONS_FILE).open("w") as fh:
        for s, qs in splits.items():
            for q, d in zip(qs, dig[s], strict=True):
                row = q.to_dict()
                row["candidates"] = [
                    {"passage_id": qa.passages[c].passage_id, "text": qa.passages[c].text}
                    for c in q.candidates
                ]
                row["dig"] = [round(float(x), 5) for x in d]
                fh.write(json.dumps(row) + "\n")

    def groups(s: str) -> list[Group]:
        return [
            Group(q.text, [qa.passages[c].text for c in q.candidates], d)
            for q, d in zip(splits[s], dig[s], strict=True)
        ]

    config = RerankerConfig.for_mode(ctx.quick)
    trained = train_reranker(groups("train"), groups("valid"), config)
    paths = export_reranker(trained, vdir / "models", vdir / "rag")
    encoders = {
        v: CrossEncoder(paths[v], paths["tokenizer"], config.serve_max_length)
        for v in ("fp32", "int8")
    }
    parity = _parity(trained, encoders["fp32"], groups("valid")[:4], config.serve_max_length)
    if parity > 1e-3:
        raise RuntimeError(f"ONNX reranker differs from torch by {parity:.2e}")

    def ranker(variant: str) -> Any:
        enc = encoders[variant]
        return lambda q: enc.score(q.text, [qa.passages[c].text for c in q.candidates]).scores

    valid_scores = [ranker(DEFAULT_VARIANT)(q) for q in splits["valid"]]
    passage_texts = [p.text for p in qa.passages]
    threshold = choose_threshold(lm, splits["valid"], passage_texts, valid_scores)
    text_encoder = TextEncoder.load(lambda rel: vdir / rel)
    bm25 = LexicalIndex.build(passage_texts, LexicalConfig())

    def bm25_rank(q: Question) -> np.ndarray:
        return bm25.scores(q.text)[list(q.candidates)]

    def bi_rank(q: Question) -> np.ndarray:
        vecs = text_encoder.encode([q.text, *[passage_texts[c] for c in q.candidates]])
        return vecs[1:] @ vecs[0]

    results = evaluate(
        lm,
        splits["test"],
        passage_texts,
        dig["test"],
        {
            "bm25": bm25_rank,
            "bi_encoder": bi_rank,
            "dig_reranker": ranker("fp32"),
            "dig_reranker_int8": ranker("int8"),
        },
        policy_ranker="dig_reranker",
        threshold=threshold.value,
        helpful_dig=config.helpful_dig,
    )
    served = {
        "max_length": config.serve_max_length,
        "threshold": threshold.value,
        "default_variant": DEFAULT_VARIANT,
        "threshold_chosen_on": f"valid questions (DERIVED): the LM's exact match with the top "
        f"{threshold.k} documents at or above it",
        "variants": sorted(encoders),
    }
    ctx.path(RERANKER_CONFIG).write_text(json.dumps(served, indent=2) + "\n")
    all_dig = np.concatenate([d for ds in dig.values() for d in ds])
    results.update(
        {
            "qa": qa.counts(),
            "labelling": {
                "lm": lm.describe(),
                "pairs": pairs,
                "computed": lm.scored,
                "from_cache": pairs - lm.scored,
                "seconds": round(label_seconds, 1),
                "ms_per_computed_pair": round(1000 * label_seconds / lm.scored, 1)
                if lm.scored
                else None,
                "dig_mean": round(float(all_dig.mean()), 4),
                "dig_positive_share": round(float((all_dig > config.helpful_dig).mean()), 4),
            },
            "reranker": {
                "config": asdict(config),
                "history": trained.history,
                "best_epoch": trained.best_epoch,
                "train_seconds": round(trained.seconds, 1),
                "onnx_max_abs_diff": parity,
            },
            "threshold": asdict(threshold),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    )
    ctx.path(RAG_EVAL_FILE).write_text(json.dumps(results, indent=2) + "\n")
    ctx.config["rag"] = {
        "qa": asdict(qa_config),
        "reranker": asdict(config),
        "lm": lm.describe(),
    }
    rows = results["rows"]
    ctx.eval_results["rag"] = {
        "queries_derived": True,
        "test_questions": results["questions"],
        "em@1": {k: rows[f"{k}@1"]["em"] for k in ("bm25", "bi_encoder", "dig_reranker")},
        "em_none": rows["none"]["em"],
        "ndcg@3_vs_dig": results["ndcg@3_vs_dig"],
        "threshold": threshold.value,
        "label_seconds": round(label_seconds, 1),
    }
    return (
        f"{pairs} DIG pairs ({lm.scored} computed, {label_seconds:.0f} s); test EM@1 "
        f"(derived questions, {results['questions']}): none {rows['none']['em']:.3f}, "
        f"BM25 {rows['bm25@1']['em']:.3f}, bi-encoder {rows['bi_encoder@1']['em']:.3f}, "
        f"DIG reranker {rows['dig_reranker@1']['em']:.3f}"
    )


def _parity(trained: Any, encoder: CrossEncoder, groups: list[Group], max_length: int) -> float:
    """Max |torch - ONNX| over a few validation groups."""
    import torch

    worst = 0.0
    for g in groups:
        enc = trained.tokenizer(
            [g.question] * len(g.documents),
            g.documents,
            truncation="only_second",
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            ref = trained.net(**enc).logits.reshape(-1).numpy()
        got = encoder.score(g.question, g.documents).scores
        worst = max(worst, float(np.abs(ref - got).max()))
    return worst
