"""``python -m models_export report-ranking``: the ranking step's test evaluation as a doc.

The figures are measured by the artifact build's ``ranking`` step (``ranking/eval.json``
of the version); this command only formats them into ``docs/results/ranking_quality``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from models_export.result_files import write_results
from services.common.artifacts import ArtifactRepository
from services.common.config import artifact_root
from services.ranking.fusion import OBJECTIVES, PREDICTED

RANKING_EVAL_FILE = "ranking/eval.json"


def markdown(doc: dict[str, Any], version: str, build: str) -> str:
    nd, rc = doc["ndcg@10"], doc["recall@10"]
    rows = [
        ("(a) retrieval order (hybrid fusion)", "retrieval"),
        *((f"(b) {o} alone", f"only_{o}") for o in OBJECTIVES),
        (
            f"(c) best global weights ({doc['global']['blend']}, floor "
            f"{doc['global']['floor']}: {doc['global']['weights']})",
            "global",
        ),
        (
            "(d) GRADE personalised weights",
            "grade",
        ),
    ]
    diff, vs_ret = doc["grade_minus_global"], doc["grade_minus_retrieval"]
    lists, mtl, grade = doc["lists"], doc["mtl"], doc["grade"]
    lines = [
        "# Ranking with GRADE fusion: two-stage test evaluation",
        "",
        f"Command: `python -m models_export report-ranking --version {version}` (figures "
        "measured by the artifact build's `ranking` step, kept in `ranking/eval.json`).  ",
        f"Artifact `{version}` ({build} build). Machine: 2-core x86_64 VM, no GPU. Data: "
        "amazon_scientific; queries DERIVED from the target item (category-path words and "
        "2-4 title words), with the user's history as of the request. Two stages: the "
        "served hybrid retriever's top 50 for each test query, then the ranker. Target = "
        "the user's next item (leave-one-out test split).",
        f"Lists: ranker trained on {lists['valid']['rank_train']} validation lists, GRADE "
        f"policy on {lists['valid']['fusion']}, weights/blend/floor chosen and early "
        f"stopping on {lists['valid']['tune']} (disjoint validation users); "
        f"{lists['test']} test lists; the retriever found the target in "
        f"{doc['target_in_candidates']:.1%} of test lists (the ceiling of Recall@10).",
        "",
        "| order | NDCG@10 | Recall@10 |",
        "|---|---|---|",
        *(f"| {name} | {nd[key]:.4f} | {rc[key]:.4f} |" for name, key in rows),
        "",
        f"(d) - (c): {diff['mean']:+.4f} NDCG@10, 95 % paired bootstrap interval "
        f"[{diff['low']:+.4f}, {diff['high']:+.4f}] (2000 resamples of test lists).  ",
        f"(d) - (a): {vs_ret['mean']:+.4f} [{vs_ret['low']:+.4f}, {vs_ret['high']:+.4f}].",
        "",
        "| predicted objective | AUC | GAUC |",
        "|---|---|---|",
        *(f"| {o} | {doc['auc'][o]:.4f} | {doc['gauc'][o]:.4f} |" for o in PREDICTED),
        "",
        "By query kind (NDCG@10): "
        + "; ".join(
            f"{k}: retrieval {v['retrieval']:.4f}, global {v['global']:.4f}, GRADE {v['grade']:.4f}"
            for k, v in doc["by_kind"].items()
        )
        + ".  ",
        f"GRADE weights served on the test lists: mean {doc['grade_weights']['mean']}, "
        f"std {doc['grade_weights']['std']} (order {list(OBJECTIVES)}).  ",
        f"Multi-task model: {mtl['epochs']} epochs, {mtl['train_seconds']} s, tune mean "
        f"GAUC {mtl['tune_mean_gauc']}; ONNX vs torch max |diff| {mtl['onnx_max_abs_diff']:.1e}. "
        f"GRADE: reference (imitation) tune NDCG@10 {grade['tune_ndcg@10_reference']}, "
        f"policy {grade['tune_ndcg@10_policy']}, {grade['train_seconds']} s.",
    ]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifact-dir", type=Path, default=None)
    parser.add_argument("--version", default="")
    parser.add_argument("--out", type=Path, default=Path("docs/results/ranking_quality"))


def run(args: argparse.Namespace) -> int:
    root = args.artifact_dir or artifact_root()
    arts = ArtifactRepository(root).open(args.version or None)
    doc = arts.read_json(RANKING_EVAL_FILE)
    text = markdown(doc, arts.version, str(arts.manifest.config.get("build", "?")))
    print(text)
    write_results(args.out, doc, text)
    return 0
