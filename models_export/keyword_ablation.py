"""``python -m models_export keyword-ablation``: does KHQE-style keyword augmentation help
the generative retriever?

Two generators are trained on the artifact's SIDs with the same settings and epoch budget:
``plain`` reads the query as it is; ``keywords`` reads the query followed by the keywords
that the query-understanding service (this artifact's lexicon and intent head, in process)
gives for it: the intended category, when the head is sure, and the brand, material and
size values found in it. Training texts (derived queries and item titles) get their
keywords from the same service, so training and serving see the same kind of input; no LM
is called at serving time.

Both are measured on the TEST split's derived queries (search mode, no history), clean and
with 1-2 typos (seeded), each query first passed through the service (both runs get its
spelling-corrected text; only ``keywords`` gets the keywords). Recall@10 / NDCG@10.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from models_export import noisy_queries
from models_export.evaluation.data import load_from_dir
from models_export.evaluation.hybrid import sample_cases
from models_export.evaluation.metrics import ndcg_at_k, recall_at_k, target_ranks
from models_export.evaluation.protocol import EvalQuery
from models_export.generator.dataset import TrainingData, load_training_data
from models_export.generator.retriever import open_onnx_retriever
from models_export.generator.train import TrainSettings, load_sids, train
from models_export.result_files import write_results
from models_export.understanding import open_understander, understand
from services.common.artifacts import ArtifactRepository
from services.common.config import artifact_root
from services.query_understanding.engine import QueryUnderstander

RUNS = ("plain", "keywords")
VARIANTS = ("clean", "typo")
KINDS = ("category", "title")


def training_keywords(qu: QueryUnderstander, data: TrainingData) -> dict[str, str]:
    """Keywords of every text the generator trains on (derived queries, titles)."""
    texts = sorted(
        {t for t in (*data.category_queries, *data.title_queries, *data.item_texts) if t}
    )
    found = understand(qu, texts)
    return {t: kw for t, (_, kw) in zip(texts, found, strict=True) if kw}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifact-dir", type=Path, default=None, help="default: ./artifacts")
    parser.add_argument("--version", default="", help="artifact version (default CURRENT)")
    parser.add_argument("--epochs", type=int, default=8, help="the same budget for both runs")
    parser.add_argument("--max-cases", type=int, default=1500, help="test queries per kind")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--preset", default="serving", help="generator size (tiny: smoke test)")
    parser.add_argument(
        "--keyword-min-probability",
        type=float,
        default=None,
        help="the intent probability a category keyword needs (default: the service's)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="evaluate a run whose model is already in --runs-dir instead of training it again",
    )
    parser.add_argument("--runs-dir", type=Path, default=None, help="default <artifacts>/runs")
    parser.add_argument("--out", type=Path, default=Path("docs/results/keyword_ablation"))


def run(args: argparse.Namespace) -> int:
    root = args.artifact_dir or artifact_root()
    arts = ArtifactRepository(root).open(args.version or None)
    version_dir = root / arts.version
    overrides = (
        {"keyword_min_probability": args.keyword_min_probability}
        if args.keyword_min_probability is not None
        else {}
    )
    qu = open_understander(root, arts.version, **overrides)
    from models_export import ingest

    item_ids = [i.item_id for i in ingest.read_items(version_dir / "tables")]
    codes, sizes = load_sids("artifact", version_dir, item_ids)
    data = load_training_data(version_dir / "tables", codes, sizes)
    t0 = time.perf_counter()
    keywords = training_keywords(qu, data)
    kw_seconds = time.perf_counter() - t0
    print(f"keywords for {len(keywords)} training texts in {kw_seconds:.0f}s")

    eval_data = load_from_dir(version_dir, with_embeddings=False)
    cases = {
        kind: sample_cases(eval_data.search_cases("test", kind, False), args.max_cases, args.seed)
        for kind in KINDS
    }
    inputs: dict[str, list[tuple[str, str]]] = {}
    for kind, kind_cases in cases.items():
        clean = [c.request.query or "" for c in kind_cases]
        typo = [
            " ".join(noisy_queries.add_typos(q.split(), np.random.default_rng((args.seed, i))))
            for i, q in enumerate(clean)
        ]
        inputs[f"{kind}/clean"] = understand(qu, clean)
        inputs[f"{kind}/typo"] = understand(qu, typo)

    runs_dir = args.runs_dir or root / "runs"
    settings = TrainSettings(preset=args.preset, epochs=args.epochs, patience=args.epochs)
    results: dict[str, Any] = {}
    for name in RUNS:
        run_data = dataclasses.replace(data, keywords=keywords if name == "keywords" else {})
        out_dir = runs_dir / f"keyword-ablation-{name}"
        if name == "keywords":
            out_dir = out_dir.with_name(f"{out_dir.name}-p{qu.settings.keyword_min_probability:g}")
        meta_file = out_dir / "generator" / "meta.json"
        if args.reuse and meta_file.is_file():
            meta = json.loads(meta_file.read_text())
        else:
            meta = train(run_data, settings, out_dir, "artifact").meta
        retriever = open_onnx_retriever(out_dir, data.codes, name=name)
        cells: dict[str, dict[str, float]] = {}
        for kind, kind_cases in cases.items():
            targets = [c.target for c in kind_cases]
            for variant in VARIANTS:
                queries = [
                    EvalQuery(
                        c.request.user_id, f"{q} {kw}" if name == "keywords" and kw else q, ()
                    )
                    for c, (q, kw) in zip(kind_cases, inputs[f"{kind}/{variant}"], strict=True)
                ]
                ranks = target_ranks(retriever.retrieve(queries, 10), targets)
                cells[f"{kind}/{variant}"] = {
                    "recall@10": recall_at_k(ranks, 10),
                    "ndcg@10": ndcg_at_k(ranks, 10),
                    "n": len(targets),
                }
        results[name] = {
            "train_seconds": meta["train_seconds"],
            "epochs_run": meta["epochs_run"],
            "best_valid": meta["best_valid"],
            "cells": cells,
        }
        print(name, json.dumps(cells))
    doc = {
        "artifact": arts.version,
        "keyword_min_probability": qu.settings.keyword_min_probability,
        "epochs": args.epochs,
        "seed": args.seed,
        "derived": True,
        "training_texts_with_keywords": len(keywords),
        "keyword_seconds": round(kw_seconds, 1),
        "runs": results,
    }
    write_results(args.out, doc, markdown(doc, args))
    return 0


def markdown(doc: dict[str, Any], args: argparse.Namespace) -> str:
    runs = doc["runs"]
    lines = [
        "# Keyword augmentation of the generative retriever (ablation)",
        "",
        f"Command: `python -m models_export keyword-ablation --epochs {args.epochs} "
        f"--max-cases {args.max_cases} --seed {args.seed} --preset {args.preset} "
        f"--keyword-min-probability {doc['keyword_min_probability']:g}` on artifact "
        f"{doc['artifact']}.  ",
        "Machine: 2-core x86_64 VM, no GPU. Data: amazon_scientific; the test queries are "
        "DERIVED from the target item (category words; 2-4 title words), typos injected "
        "with a fixed seed; search mode without history. Both runs: same SIDs, settings and "
        f"epoch budget ({doc['epochs']} epochs), single run each, no seed averaging. "
        "Cells are Recall@10 / NDCG@10.",
        "",
        "| queries | " + " | ".join(RUNS) + " | keywords - plain (NDCG@10) |",
        "|---|" + "---|" * len(RUNS) + "---|",
    ]
    for kind in KINDS:
        for variant in VARIANTS:
            key = f"{kind}/{variant}"
            cells = [runs[r]["cells"][key] for r in RUNS]
            delta = cells[1]["ndcg@10"] - cells[0]["ndcg@10"]
            lines.append(
                f"| {kind} / {variant} (n={cells[0]['n']}) | "
                + " | ".join(f"{c['recall@10']:.4f} / {c['ndcg@10']:.4f}" for c in cells)
                + f" | {delta:+.4f} |"
            )
    lines += [
        "",
        "| run | train s | epochs | best valid |",
        "|---|---|---|---|",
    ]
    for r in RUNS:
        m = runs[r]
        lines.append(f"| {r} | {m['train_seconds']} | {m['epochs_run']} | {m['best_valid']} |")
    lines.append(
        f"\nKeywords were made for {doc['training_texts_with_keywords']} training texts in "
        f"{doc['keyword_seconds']} s by the query-understanding engine in process."
    )
    return "\n".join(lines) + "\n"
