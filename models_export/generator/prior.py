"""Fit the co-visitation decoding prior of a trained generator.

The table is counted on the TRAINING histories only; the prior's weight is the one with
the best recommendation-mode NDCG@10 on the validation split (weight 0 = the generator
alone is a candidate, so the prior is only switched on where it helps there). Writes
``generator/covisit.npz`` and ``generator/covisit_prior.json`` under the run directory;
the retrieval service fuses the prior into decoding of requests without query text.

``python -m models_export fit-prior --version V`` refits it on an existing artifact version
and rewrites that version's manifest (the artifact build's generator step calls
:func:`fit_prior` itself).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models_export.evaluation.data import EvalData, load_eval_data
from models_export.evaluation.harness import evaluate_cases
from models_export.generator.retriever import open_onnx_retriever
from services.common.artifacts import ArtifactRepository, write_manifest
from services.retrieval.covisit import SETTINGS_FILE, TABLE_FILE, CovisitPrior, CovisitTable
from services.retrieval.loader import GENERATOR_CODES

WEIGHT_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
SELECTION_METRIC = "ndcg@10"


def fit_prior(
    run_dir: Path,
    data: EvalData,
    codes: np.ndarray,
    grid: Sequence[float] = WEIGHT_GRID,
    valid_users: int | None = None,
    beam_width: int = 20,
    threads: int = 2,
) -> dict[str, Any]:
    """Count the table, choose the weight on validation (the other settings are
    :class:`CovisitPrior`'s defaults), write both files; returns the settings written (with
    the grid's validation scores)."""
    t0 = time.perf_counter()
    table = CovisitTable.from_histories(data.train_histories, data.num_items)
    retriever = open_onnx_retriever(
        run_dir, codes, name="generative+covisit", beam_width=beam_width, threads=threads
    )
    cases = data.recommendation_cases("valid")[:valid_users]
    scores: dict[str, float] = {}
    for weight in grid:
        retriever.prior = CovisitPrior(table, weight)
        metrics, _ = evaluate_cases(retriever, cases, batch_size=256)
        scores[f"{weight:g}"] = round(metrics[SELECTION_METRIC], 5)
        print(f"prior weight {weight:g}: valid {SELECTION_METRIC} {metrics[SELECTION_METRIC]:.4f}")
    best = max(grid, key=lambda w: (scores[f"{w:g}"], -w))  # ties: the smaller weight
    chosen = CovisitPrior(table, best)
    out: dict[str, Any] = {
        **chosen.settings(),
        "chosen_on": f"valid recommendation {SELECTION_METRIC}",
        "valid_users": len(cases),
        "valid_grid": scores,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    table.save(run_dir / TABLE_FILE)
    (run_dir / SETTINGS_FILE).write_text(json.dumps(out, indent=2) + "\n")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="artifact root")
    parser.add_argument("--version", default=None, help="artifact version (default: CURRENT)")
    parser.add_argument("--valid-users", type=int, default=None, help="validation users used")
    parser.add_argument(
        "--grid", type=float, nargs="+", default=list(WEIGHT_GRID), help="prior weights tried"
    )
    parser.add_argument("--threads", type=int, default=2)


def run(args: argparse.Namespace) -> int:
    """Refit the prior of an existing version and rewrite its manifest."""
    arts = ArtifactRepository(args.artifacts).open(args.version)
    codes = np.load(arts.path(GENERATOR_CODES), allow_pickle=False).astype(np.int64)
    data = load_eval_data(arts.path, with_embeddings=False, source=arts.version)
    out = fit_prior(arts.root, data, codes, args.grid, args.valid_users, threads=args.threads)
    eval_results = dict(arts.manifest.eval)
    eval_results.setdefault("generator", {})["prior"] = out
    write_manifest(arts.root, arts.version, arts.manifest.config, eval_results)
    print(json.dumps(out, indent=2))
    return 0
