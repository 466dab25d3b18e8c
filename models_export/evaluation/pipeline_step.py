"""Artifact pipeline step: evaluate the baselines into ``eval/baselines.json``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from models_export.evaluation.baselines.dense import TextEncoder as TextEncoderFn
from models_export.evaluation.baselines.minilm import minilm_encoder
from models_export.evaluation.cli import suite_config
from models_export.evaluation.data import SPLITS, load_from_dir
from models_export.evaluation.report import results_dict, summary_line
from models_export.evaluation.suite import ALL_METHODS, run_baselines
from services.common.text_encoder import TEXT_ENCODER_MODEL, TextEncoder

if TYPE_CHECKING:
    from models_export.pipeline import BuildContext

OUTPUT = "eval/baselines.json"
TEXT_METHODS = frozenset({"bm25", "dense", "dense+history"})  # need item and query text


def query_encoder(ctx: BuildContext) -> TextEncoderFn:
    """The dense baseline's query encoder: the artifact's ONNX text encoder, the one that
    serves query understanding and the retriever (exported from the weights that embedded
    the items, parity checked at export); the torch model when the build has no export."""
    if (ctx.version_dir / TEXT_ENCODER_MODEL).is_file():
        return TextEncoder.load(lambda rel: ctx.version_dir / rel, intra_op_threads=2).encode
    return minilm_encoder(ctx.settings.embed)


def step_eval_baselines(ctx: BuildContext) -> str:
    """Run every baseline on valid and test (without item text, the ones that read only
    the log); store the results and a test summary."""
    methods = [m for m in ALL_METHODS if ctx.has_text or m not in TEXT_METHODS]
    cfg = suite_config(ctx.quick, methods, list(SPLITS), False, 0)
    data = load_from_dir(ctx.version_dir)
    result = run_baselines(data, cfg, encoder_factory=lambda: query_encoder(ctx))
    doc = results_dict(
        result,
        "python -m models_export artifacts" + (" --quick" if ctx.quick else ""),
        "Baselines (artifact build)",
    )
    ctx.path(OUTPUT).write_text(json.dumps(doc, indent=2) + "\n")
    ctx.config["eval_baselines"] = result.config
    ctx.eval_results["baselines"] = {
        "file": OUTPUT,
        "queries_derived": True,
        "test": {
            f"{r.mode}/{r.query_kind or '-'}/{r.method}": {
                "recall@10": r.metrics["recall@10"],
                "ndcg@10": r.metrics["ndcg@10"],
            }
            for r in result.rows
            if r.split == "test" and r.metrics is not None
        },
    }
    return summary_line(result, "test")
