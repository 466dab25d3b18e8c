"""Evaluate an exported generator (ONNX Runtime) with the evaluation harness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from models_export.evaluation.data import load_from_dir
from models_export.evaluation.harness import DERIVED_NOTE, EvalSettings, ResultRow, run_suite
from models_export.generator.retriever import GenerativeRetriever, open_onnx_retriever
from services.retrieval.covisit import SETTINGS_FILE, TABLE_FILE, CovisitPrior


def evaluate_run(
    run_dir: Path,
    version_dir: Path,
    codes: np.ndarray,
    text: bool = True,
    split: str = "test",
    beam_width: int = 20,
    threads: int = 2,
    name: str = "generative",
    exclude_history: bool = False,
) -> list[ResultRow]:
    """Every mode on ``split``; writes ``eval/generator_<split>.json`` under ``run_dir``
    (``generator_<split>_exclude_history.json`` when the history items are left out, inside
    decoding). When the run has a co-visitation prior with a weight above 0 (see
    ``models_export.generator.prior``), recommendation mode is also decoded with it fused
    in, as ``<name>+covisit``."""
    data = load_from_dir(version_dir, with_embeddings=False)
    retriever = open_onnx_retriever(
        run_dir, codes, name=name, beam_width=beam_width, threads=threads, text=text
    )
    retrievers = [retriever]
    if (run_dir / TABLE_FILE).is_file() and (run_dir / SETTINGS_FILE).is_file():
        prior = CovisitPrior.from_files(run_dir / TABLE_FILE, run_dir / SETTINGS_FILE)
        if prior.weight > 0:
            retrievers.append(
                GenerativeRetriever(
                    f"{name}+covisit",
                    retriever.encoder,
                    retriever.search,
                    beam_width,
                    text=False,
                    prior=prior,
                )
            )
    settings = EvalSettings(splits=(split,), batch_size=256, exclude_history=exclude_history)
    rows = run_suite(retrievers, data, settings)
    out: dict[str, Any] = {
        "split": split,
        "beam_width": beam_width,
        "history_items_removed_from_ranking": exclude_history,
        "note": DERIVED_NOTE,
        "rows": [r.to_dict() for r in rows],
    }
    suffix = "_exclude_history" if exclude_history else ""
    path = run_dir / "eval" / f"generator_{split}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    for r in rows:
        if r.metrics is not None:
            m = r.metrics
            print(
                f"{split} {r.method:20s} {r.mode:15s} {r.query_kind or '-':9s} n={r.n:5d} "
                f"R@10 {m['recall@10']:.4f} NDCG@10 {m['ndcg@10']:.4f} ({r.seconds:.0f}s)"
            )
    return rows
