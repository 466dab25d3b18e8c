"""``python -m models_export evaluate``: run the baselines on an artifact version.

Writes ``<out-dir>/<name>.json`` and ``.md`` (default ``docs/results/baselines.*``) with the
command that produced them. Search-mode queries are derived (Ai et al. 2017), never real.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from models_export.evaluation.data import SPLITS, EvalData, load_from_artifact, load_from_dir
from models_export.evaluation.report import summary_line, write_outputs
from models_export.evaluation.suite import ALL_METHODS, SuiteConfig, run_baselines
from services.common.artifacts import ArtifactRepository
from services.common.config import artifact_root


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``evaluate`` subcommand."""
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=None,
        help="artifact root (default $GENSEARCH_ARTIFACT_DIR or ./artifacts)",
    )
    parser.add_argument("--version", default="", help="artifact version (default: CURRENT)")
    parser.add_argument(
        "--version-dir",
        type=Path,
        default=None,
        help="read an unfinished version directory directly (no manifest check)",
    )
    parser.add_argument(
        "--methods",
        type=_csv,
        default=list(ALL_METHODS),
        help=f"comma-separated subset of {','.join(ALL_METHODS)}",
    )
    parser.add_argument("--splits", type=_csv, default=list(SPLITS), help="valid,test")
    parser.add_argument(
        "--exclude-history",
        action="store_true",
        help="drop the user's history items from every ranking (analysis only; "
        "the standard protocol keeps them)",
    )
    parser.add_argument("--tie-seed", type=int, default=0, help="seed of the tie-break order")
    parser.add_argument(
        "--quick", action="store_true", help="small validation grids; SASRec <= 30 epochs / 60 s"
    )
    parser.add_argument("--sasrec-max-epochs", type=int, default=None)
    parser.add_argument("--sasrec-max-seconds", type=float, default=None)
    parser.add_argument(
        "--sasrec-threads",
        type=int,
        default=None,
        choices=(1, 2),
        help="torch intra-op threads for SASRec (default 1)",
    )
    parser.add_argument("--out-dir", type=Path, default=Path("docs/results"))
    parser.add_argument("--name", default="baselines", help="output file stem")
    parser.add_argument("--no-progress", action="store_true")


def suite_config(
    quick: bool,
    methods: list[str],
    splits: list[str],
    exclude_history: bool,
    tie_seed: int,
    sasrec: dict[str, Any] | None = None,
) -> SuiteConfig:
    """The suite settings for a full or a quick run."""
    cfg = SuiteConfig(
        methods=methods,
        splits=splits,
        exclude_history=exclude_history,
        tie_seed=tie_seed,
        sasrec=dict(sasrec or {}),
    )
    if quick:
        cfg.bm25_field_grid = cfg.bm25_field_grid[:1]
        cfg.history_last_n_grid = (None, 3)
        cfg.dense_history_weight_grid = (0.25,)
        cfg.covisit_decay_grid = (0.5,)
        cfg.sasrec.setdefault("max_seconds", 60.0)
        cfg.sasrec.setdefault("max_epochs", 30)
        cfg.sasrec.setdefault("patience", 5)
    return cfg


def _load(args: argparse.Namespace) -> EvalData:
    if args.version_dir is not None:
        return load_from_dir(args.version_dir)
    repo = ArtifactRepository(args.artifacts if args.artifacts is not None else artifact_root())
    return load_from_artifact(repo.open(args.version or None))


def _command() -> str:
    argv = sys.argv[1:]
    if "evaluate" not in argv:
        return "python -m models_export evaluate (called programmatically)"
    return "python -m models_export " + shlex.join(argv)


def run(args: argparse.Namespace) -> int:
    """Evaluate, write the JSON + Markdown, print a one-line summary."""
    bad = set(args.methods) - set(ALL_METHODS) or set(args.splits) - set(SPLITS)
    if bad:
        print(f"unknown method(s)/split(s): {', '.join(sorted(bad))}", file=sys.stderr)
        return 2
    sasrec: dict[str, Any] = {}
    if args.sasrec_max_epochs is not None:
        sasrec["max_epochs"] = args.sasrec_max_epochs
    if args.sasrec_max_seconds is not None:
        sasrec["max_seconds"] = args.sasrec_max_seconds
    if args.sasrec_threads is not None:
        sasrec["threads"] = args.sasrec_threads
    cfg = suite_config(
        args.quick, args.methods, args.splits, args.exclude_history, args.tie_seed, sasrec
    )
    data = _load(args)
    result = run_baselines(data, cfg, show_progress=not args.no_progress)
    jpath, mpath = write_outputs(result, _command(), args.out_dir, args.name)
    split = "test" if "test" in cfg.splits else cfg.splits[0]
    print(summary_line(result, split))
    print(f"wrote {jpath} and {mpath} in {result.total_seconds:.0f}s")
    return 0
