"""``python -m models_export report-rag``: the rag step's evaluation as a doc.

The figures are measured by the artifact build's ``rag`` step (``rag/eval.json`` of the
version); this command only formats them into ``docs/results/rag_quality``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from models_export.result_files import write_results
from services.common.artifacts import ArtifactRepository
from services.common.config import artifact_root

RAG_EVAL_FILE = "rag/eval.json"
METHODS = (
    ("(a) no document", "none", None),
    ("(b) random", "random", "random"),
    ("(c) BM25", "bm25", "bm25"),
    ("(d) MiniLM bi-encoder", "bi_encoder", "bi_encoder"),
    ("(e) DIG reranker (fp32)", "dig_reranker", "dig_reranker"),
    ("(e) DIG reranker (int8, served)", "dig_reranker_int8", "dig_reranker_int8"),
)


def _row(doc: dict[str, Any], name: str, key: str, ndcg_key: str | None) -> str:
    rows = doc["rows"]
    if key == "none":
        r = rows["none"]
        return f"| {name} | {r['em']:.3f} | {r['answer_in']:.3f} | – | – | – |"
    one, three = rows[f"{key}@1"], rows[f"{key}@3"]
    nd = doc["ndcg@3_vs_dig"][ndcg_key] if ndcg_key else None
    return (
        f"| {name} | {one['em']:.3f} | {one['answer_in']:.3f} | {three['em']:.3f} | "
        f"{three['answer_in']:.3f} | {nd:.4f} |"
    )


def markdown(doc: dict[str, Any], version: str, settings: str) -> str:
    lab, rr, th = doc["labelling"], doc["reranker"], doc["threshold_policy"]
    qa = doc["qa"]
    pol1, pol3 = doc["rows"]["dig_reranker+threshold@1"], doc["rows"]["dig_reranker+threshold@3"]
    boot = doc["bootstrap_em"]
    lines = [
        "# RAG reranking (InfoGain-RAG): exact match of the LM with the chosen documents",
        "",
        f"Command: `python -m models_export report-rag --version {version}` (figures measured "
        "by the artifact build's `rag` step, kept in `rag/eval.json`).  ",
        f"Artifact `{version}` ({settings} settings for the rag step). Machine: 2-core x86_64 "
        "VM, no GPU. Questions are DERIVED from the amazon_scientific catalog (which brand "
        "makes X / what type of product X is / what X is made of), split by item: test "
        f"questions are about items the reranker never saw. {doc['questions']} test "
        f"questions ({qa['test']['kinds']}); {qa['test']['unanswerable']} of them have no "
        "candidate stating the answer.  ",
        f"LM: {lab['lm']['model']} (transformers, CPU), greedy answers of at most 12 tokens "
        "after a per-kind answer lead (e.g. 'The brand is'). EM: the answer's first clause "
        "equals the gold answer after SQuAD normalisation; 'in': the gold answer appears in "
        "the answer.",
        "",
        "| documents given | EM top-1 | in top-1 | EM top-3 | in top-3 | NDCG@3 vs DIG |",
        "|---|---|---|---|---|---|",
        *(_row(doc, name, key, nd) for name, key, nd in METHODS),
        "",
        "Paired bootstrap of EM (2000 resamples of test questions): "
        + "; ".join(
            f"{k}: {v['mean']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]" for k, v in boot.items()
        )
        + ".",
        "",
        f'**Threshold (InfoGain-RAG\'s filter, and the "no document" answer)**: documents '
        f"scoring under {th['threshold']} (reranker logit) are not passed. Chosen on "
        f"{qa['valid']['questions']} validation questions as the LM's best EM with the top "
        f"{doc['threshold']['k']} documents at or above it (candidates: no threshold and "
        f"quantiles of the validation scores; EM per candidate {doc['threshold']['valid_em']}, "
        f"{doc['threshold']['valid_em_without']:.3f} without). On test: EM top-1 with it "
        f"{pol1['em']:.3f} (no document for {pol1['no_document_share']:.1%} of questions), "
        f"top-3 {pol3['em']:.3f} (no document for {pol3['no_document_share']:.1%}). No "
        f"document for {th['no_document_share_answerable']} of answerable and "
        f"{th['no_document_share_unanswerable']} of unanswerable questions. The best score "
        "separates questions where some document helps (DIG > 0.05; "
        f"{th['helpful_questions']} of {doc['questions']}) from the rest with AUC "
        f"{th['top_score_auc_helpful_vs_not']}.",
        "",
        f"**Labelling**: {lab['pairs']} (question, document) confidences incl. the "
        f"no-document ones ({lab['computed']} computed, {lab['from_cache']} from the cache) "
        f"in {lab['seconds']} s"
        + (
            f", {lab['ms_per_computed_pair']} ms per computed pair"
            if lab["computed"]
            else " (all cached)"
        )
        + "; mean "
        f"DIG {lab['dig_mean']}, share above the helpful threshold {lab['dig_positive_share']}. "
        f"Train / valid / test questions: {qa['train']['questions']} / "
        f"{qa['valid']['questions']} / {qa['test']['questions']}.  ",
        f"**Reranker**: best epoch {rr['best_epoch']} of {rr['config']['epochs']} "
        f"(validation NDCG@3 {[round(h['valid_ndcg@3'], 4) for h in rr['history']]}), "
        f"{rr['train_seconds']} s; ONNX vs torch max |diff| {rr['onnx_max_abs_diff']:.1e}. "
        f"Whole step {doc['seconds']} s.",
    ]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifact-dir", type=Path, default=None)
    parser.add_argument("--version", default="")
    parser.add_argument("--out", type=Path, default=Path("docs/results/rag_quality"))


def run(args: argparse.Namespace) -> int:
    root = args.artifact_dir or artifact_root()
    arts = ArtifactRepository(root).open(args.version or None)
    doc = arts.read_json(RAG_EVAL_FILE)
    config = arts.manifest.config
    settings = config.get("extended_from", {}).get("settings") or config.get("build", "?")
    text = markdown(doc, arts.version, str(settings))
    print(text)
    write_results(args.out, doc, text)
    return 0
