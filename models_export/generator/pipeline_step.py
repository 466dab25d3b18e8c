"""Artifact pipeline step: train the generator on the artifact's SIDs, export, evaluate."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from models_export.generator.dataset import load_training_data
from models_export.generator.train import TrainSettings, load_sids, train

if TYPE_CHECKING:
    from models_export.pipeline import BuildContext

OUTPUT = "eval/generator_test.json"  # written by evaluate_run


def step_generator(ctx: BuildContext) -> str:
    """Train + export (``generator/``, ``models/generator_*``), fit the co-visitation
    decoding prior (``generator/covisit*``); full builds also evaluate the ONNX model on
    the test split (every mode; recommendation also with the prior) into
    ``eval/generator_test.json``.

    A quick build trains the ``tiny`` preset for one epoch: it checks the plumbing, its
    model is not meant to retrieve well."""
    item_ids = [i.item_id for i in ctx.items()]
    codes, sizes = load_sids("artifact", ctx.version_dir, item_ids)
    data = load_training_data(ctx.version_dir / "tables", codes, sizes)
    settings = (
        TrainSettings(preset="tiny", epochs=1, max_minutes=1.0, valid_users=50)
        if ctx.quick
        else TrainSettings()
    )
    result = train(data, settings, ctx.version_dir, "artifact")
    meta = result.meta
    ctx.config["generator"] = {k: meta[k] for k in ("preset", "architecture", "settings")}
    summary = {
        k: meta[k]
        for k in (
            "parameters",
            "train_seconds",
            "epochs_run",
            "best_epoch",
            "best_valid",
            "stop_reason",
            "onnx",
        )
    }
    # the co-visitation decoding prior (training histories; weight chosen on validation)
    from models_export.evaluation.data import load_from_dir
    from models_export.generator.prior import fit_prior

    eval_data = load_from_dir(ctx.version_dir, with_embeddings=False)
    small: dict[str, Any] = {"grid": (0.0, 1.0), "valid_users": 50} if ctx.quick else {}
    summary["prior"] = fit_prior(ctx.version_dir, eval_data, data.codes, **small)
    if not ctx.quick:
        from models_export.generator.evaluate import evaluate_run

        rows = evaluate_run(ctx.version_dir, ctx.version_dir, data.codes, text=data.has_text)
        summary["file"] = OUTPUT
        summary["test"] = {
            f"{r.method}/{r.mode}/{r.query_kind or '-'}": {
                "recall@10": r.metrics["recall@10"],
                "ndcg@10": r.metrics["ndcg@10"],
            }
            for r in rows
            if r.metrics is not None
        }
        summary["queries_derived"] = True
    ctx.eval_results["generator"] = summary
    best = meta["best_valid"]
    return (
        f"generator {meta['parameters']:,} params, {meta['epochs_run']} epochs in "
        f"{meta['train_seconds']:.0f}s, valid score {best['score']:.4f}, ONNX max|diff| "
        f"{meta['onnx']['max_abs_diff_step_logits_onnx_vs_hf']:.1e}, co-visit prior weight "
        f"{summary['prior']['weight']:g}"
    )
