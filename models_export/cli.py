"""``python -m models_export <subcommand>``: the offline pipeline's command line.

To add a subcommand, add ONE line to :data:`SUBCOMMANDS`: ``(name, module, help)``.
The module must expose ``add_arguments(parser: argparse.ArgumentParser) -> None`` and
``run(args: argparse.Namespace) -> int``. Only the chosen subcommand's module is
imported, so a heavy import (torch) in one does not slow down the others.

A missing or unusable input file (:class:`~models_export.dataset_files.DataInputError`)
ends the command with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from models_export.dataset_files import DataInputError

INPUT_ERROR_EXIT = 2

SUBCOMMANDS: list[tuple[str, str, str]] = [
    ("ingest", "models_export.ingest", "validate the catalog and log, write tables"),
    ("artifacts", "models_export.pipeline", "build a full versioned artifact directory"),
    ("tokenizers", "models_export.tokenizer_comparison", "compare SID tokenizers (doc)"),
    ("train-generator", "models_export.generator.train", "train + export the SID generator"),
    ("evaluate", "models_export.evaluation.cli", "Recall/NDCG of baselines (derived queries)"),
    ("fit-prior", "models_export.generator.prior", "refit the generator's co-visitation prior"),
    (
        "evaluate-hybrid",
        "models_export.evaluation.hybrid_cli",
        "generator, BM25, dense and their fusion on clean and noisy derived queries",
    ),
    ("report-intent", "models_export.query_intent", "the intent head's held-out accuracy (doc)"),
    (
        "keyword-ablation",
        "models_export.keyword_ablation",
        "generator with vs without query-understanding keywords (same budget)",
    ),
    ("evaluate-spelling", "models_export.spelling_eval", "spelling correction on typo'd queries"),
    ("report-ranking", "models_export.ranking.report", "the ranker's two-stage test evaluation"),
    ("report-rag", "models_export.rag.report", "the RAG reranker's exact-match evaluation"),
]


def _load(module_name: str) -> ModuleType:
    module = importlib.import_module(module_name)
    for attr in ("add_arguments", "run"):
        if not callable(getattr(module, attr, None)):
            raise TypeError(f"{module_name} must define {attr}() to be a subcommand")
    return module


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """Parser with every subcommand; arguments only for the one named in ``argv``."""
    parser = argparse.ArgumentParser(prog="python -m models_export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, module_name, help_text in SUBCOMMANDS:
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = _load(module_name)
            module.add_arguments(sub_parser)
            sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns its exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(args_list).parse_args(args_list)
    try:
        return int(args._run(args))
    except DataInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return INPUT_ERROR_EXIT
