"""Artifact step ``ranking``: features, the multi-task model, GRADE fusion, evaluation.

Writes ``ranking/features.json`` (the feature spec), ``models/ranking_mtl`` and
``models/ranking_policy`` (ONNX, Triton layout), ``ranking/fusion.json`` (objectives,
blend, relevance floor, global weights, exploration concentration) and
``ranking/eval.json`` (the two-stage test evaluation, DERIVED queries). Skipped for a
catalog without item text: every list is a search list, and without text there are no
queries to derive.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from models_export.evaluation.data import load_from_dir
from models_export.evaluation.hybrid import open_sources
from models_export.ranking.grade import (
    GlobalChoice,
    GradeConfig,
    ScoredList,
    choose_global,
    export_policy,
    list_ndcg,
    train_policy,
)
from models_export.ranking.lists import RankList, build_lists, labels, list_inputs
from models_export.ranking.metrics import auc, gauc, paired_bootstrap, target_gains
from models_export.ranking.mtl import MtlConfig, export_ranker, predict, train_ranker
from models_export.ranking.report import RANKING_EVAL_FILE
from services.common.text_encoder import TEXT_ENCODER_MODEL
from services.ranking.features import FEATURES_FILE, FeatureSpec, user_features
from services.ranking.fusion import OBJECTIVES, PREDICTED
from services.ranking.loader import RANKING_FUSION_FILE
from services.ranking.model import MultiTaskModel, score_lists
from services.ranking.policy import PolicyModel, policy_context
from services.retrieval.fusion import FUSION_FILE as RETRIEVAL_FUSION_FILE
from services.retrieval.fusion import FusionPolicy

if TYPE_CHECKING:
    from models_export.pipeline import BuildContext

SEED = 23
#: lists per query kind: (valid, test)
FULL_CASES = (None, 3000)
QUICK_CASES = (600, 200)


def step_ranking(ctx: BuildContext) -> str:
    """Train, export and evaluate the ranker and its GRADE fusion."""
    if not ctx.has_text:
        return "skipped: the catalog has no item text (no derived queries to rank for)"
    t0 = time.perf_counter()
    vdir = ctx.version_dir
    missing = [
        rel for rel in (TEXT_ENCODER_MODEL, RETRIEVAL_FUSION_FILE) if not (vdir / rel).is_file()
    ]
    if missing:
        return f"skipped: the version has no {' / '.join(missing)} (the ranker's query features)"
    data = load_from_dir(vdir, with_embeddings=True)
    assert data.embeddings is not None
    spec = FeatureSpec.build(data.item_ids, data.categories, data.brands, data.train_histories)
    ctx.path(FEATURES_FILE).write_bytes(json.dumps(spec.to_dict()).encode())
    sources = open_sources(vdir)
    retrieval_policy = FusionPolicy.from_dict(
        json.loads((vdir / RETRIEVAL_FUSION_FILE).read_text())
    )
    n_valid, n_test = QUICK_CASES if ctx.quick else FULL_CASES
    valid, valid_q = build_lists(data, sources, retrieval_policy, "valid", n_valid, SEED)
    test, test_q = build_lists(data, sources, retrieval_policy, "test", n_test, SEED)
    t_lists = time.perf_counter() - t0

    vecs = data.embeddings
    valid_x = list_inputs(spec, vecs, valid, valid_q)
    valid_y = [labels(spec, x) for x in valid]
    part = {
        p: [i for i, x in enumerate(valid) if x.part == p] for p in ("rank_train", "fusion", "tune")
    }
    mtl_config = MtlConfig.for_mode(ctx.quick)
    trained = train_ranker(
        spec,
        vecs,
        [valid_x[i] for i in part["rank_train"]],
        [valid_y[i] for i in part["rank_train"]],
        [valid_x[i] for i in part["tune"]],
        [valid_y[i] for i in part["tune"]],
        mtl_config,
    )
    path = export_ranker(trained.net, valid_x[:4], vdir)
    model = MultiTaskModel(path)
    parity = max(
        float(np.abs(a - b[:, : len(PREDICTED)]).max())
        for a, b in zip(
            predict(trained.net, valid_x[:32]), score_lists(model, valid_x[:32]), strict=True
        )
    )
    if parity > 1e-4:
        raise RuntimeError(f"ONNX ranker differs from torch by {parity:.2e}")

    def scored(lists: Sequence[RankList], inputs: Sequence[Any]) -> list[ScoredList]:
        scores = score_lists(model, list(inputs))
        return [
            ScoredList(
                s,
                lst.rows.index(lst.target) if lst.hit else -1,
                policy_context(user_features(spec, lst.history.tolist()), lst.query, s),
            )
            for lst, s in zip(lists, scores, strict=True)
        ]

    # the fusion works on lists the multi-task model was not trained on
    tune_s, fusion_s = (
        scored([valid[i] for i in part[p]], [valid_x[i] for i in part[p]])
        for p in ("tune", "fusion")
    )
    grade_config = GradeConfig.for_mode(ctx.quick)
    choice = choose_global(tune_s, grade_config)
    policy = train_policy(fusion_s, tune_s, choice, grade_config)
    policy_path = export_policy(policy.net, vdir)
    fusion_doc = {
        "objectives": list(OBJECTIVES),
        "predicted": list(PREDICTED),
        "blend": choice.blend,
        "relevance_floor": choice.floor,
        "global_weights": choice.weights.round(6).tolist(),
        "exploration_concentration": grade_config.concentration,
        "chosen_on": "valid split, 'tune' users, derived queries: NDCG@10 of the next item",
        "grid": choice.table,
    }
    ctx.path(RANKING_FUSION_FILE).write_text(json.dumps(fusion_doc, indent=2) + "\n")

    test_x = list_inputs(spec, vecs, test, test_q)
    test_y = [labels(spec, x) for x in test]
    test_s = scored(test, test_x)
    results = evaluate(test, test_y, test_s, choice, PolicyModel(policy_path))
    results.update(
        {
            "queries_derived": True,
            "lists": {
                "valid": {p: len(v) for p, v in part.items()},
                "test": len(test),
                "valid_target_retrieved": round(float(np.mean([x.hit for x in valid])), 4),
            },
            "mtl": {
                "config": asdict(mtl_config),
                "epochs": trained.epochs_run,
                "tune_mean_gauc": round(trained.best_tune_gauc, 4),
                "history": trained.history,
                "train_seconds": round(trained.seconds, 1),
                "onnx_max_abs_diff": parity,
            },
            "grade": {
                "config": asdict(grade_config),
                "history": policy.history,
                "tune_ndcg@10_reference": round(policy.reference_tune_ndcg, 5),
                "tune_ndcg@10_policy": round(policy.tune_ndcg, 5),
                "train_seconds": round(policy.seconds, 1),
            },
            "global": {
                "blend": choice.blend,
                "floor": choice.floor,
                "weights": choice.weights.round(3).tolist(),
            },
            "seconds": {"lists": round(t_lists, 1), "total": round(time.perf_counter() - t0, 1)},
        }
    )
    ctx.path(RANKING_EVAL_FILE).write_text(json.dumps(results, indent=2) + "\n")
    ctx.config["ranking"] = {"mtl": asdict(mtl_config), "grade": asdict(grade_config)}
    ctx.eval_results["ranking"] = {
        "queries_derived": True,
        "test_lists": len(test),
        "ndcg@10": results["ndcg@10"],
        "grade_minus_global": results["grade_minus_global"],
        "auc": results["auc"],
        "gauc": results["gauc"],
    }
    nd = results["ndcg@10"]
    diff = results["grade_minus_global"]
    return (
        f"test NDCG@10 (derived queries, {len(test)} lists): retrieval {nd['retrieval']:.4f}, "
        f"global {nd['global']:.4f}, GRADE {nd['grade']:.4f} "
        f"(GRADE - global {diff['mean']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}])"
    )


def evaluate(
    lists: Sequence[RankList],
    label_rows: Sequence[np.ndarray],
    scored: Sequence[ScoredList],
    choice: GlobalChoice,
    policy: PolicyModel,
) -> dict[str, Any]:
    """Two-stage test evaluation: AUC / GAUC per predicted objective; NDCG@10 and Recall@10
    of the target for retrieval order, each objective alone, global and GRADE weights."""
    out: dict[str, Any] = {"auc": {}, "gauc": {}, "ndcg@10": {}, "recall@10": {}}
    for t, name in enumerate(PREDICTED):
        s = [x.scores[:, t] for x in scored]
        y = [r[:, t] for r in label_rows]
        out["auc"][name] = round(auc(np.concatenate(s), np.concatenate(y)), 4)
        out["gauc"][name] = round(gauc(s, y), 4)
    per_list: dict[str, np.ndarray] = {}
    per_list["retrieval"] = target_gains([x.rows for x in lists], [x.target for x in lists])[0]
    eye = np.eye(len(OBJECTIVES))
    for t, name in enumerate(OBJECTIVES):
        per_list[f"only_{name}"] = np.array(
            [list_ndcg(x, eye[t : t + 1], "additive", 0.0)[0] for x in scored]
        )
    w_global = choice.weights[None, :]
    per_list["global"] = np.array(
        [list_ndcg(x, w_global, choice.blend, choice.floor)[0] for x in scored]
    )
    weights = policy.weights(np.stack([x.context for x in scored]))
    per_list["grade"] = np.array(
        [
            list_ndcg(x, weights[i : i + 1], choice.blend, choice.floor)[0]
            for i, x in enumerate(scored)
        ]
    )
    for name, ndcg in per_list.items():
        out["ndcg@10"][name] = round(float(ndcg.mean()), 5)
        out["recall@10"][name] = round(float((ndcg > 0).mean()), 5)
    mean, low, high = paired_bootstrap(per_list["grade"], per_list["global"], seed=SEED)
    out["grade_minus_global"] = {
        "mean": round(mean, 5),
        "low": round(low, 5),
        "high": round(high, 5),
    }
    mean, low, high = paired_bootstrap(per_list["grade"], per_list["retrieval"], seed=SEED)
    out["grade_minus_retrieval"] = {
        "mean": round(mean, 5),
        "low": round(low, 5),
        "high": round(high, 5),
    }
    out["target_in_candidates"] = round(float(np.mean([x.target >= 0 for x in scored])), 4)
    out["grade_weights"] = {
        "mean": weights.mean(0).round(4).tolist(),
        "std": weights.std(0).round(4).tolist(),
    }
    out["by_kind"] = {
        kind: {
            name: round(float(v[[i for i, lst in enumerate(lists) if lst.kind == kind]].mean()), 5)
            for name, v in per_list.items()
            if name in ("retrieval", "global", "grade")
        }
        for kind in sorted({lst.kind for lst in lists})
    }
    return out
