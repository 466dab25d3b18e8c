"""``python -m models_export evaluate-hybrid``: each candidate source alone vs their fusion.

Writes ``<out-dir>/<name>.json`` and ``.md``: Recall@10 / NDCG@10 per query class (derived
category and title queries, clean and with each noise kind, with and without history) for
the generator, BM25, dense search and the hybrid, with the fusion weights the artifact
chose on validation (or chosen now on validation when the artifact has none).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any

from models_export.evaluation.data import QUERY_KINDS, load_from_dir
from models_export.evaluation.harness import DERIVED_NOTE
from models_export.evaluation.hybrid import (
    CLEAN,
    NOISE_KINDS,
    SERVED_DEPTH,
    QueryClass,
    choose_on_validation,
    open_sources,
    query_classes,
    run_classes,
    score_classes,
)
from models_export.evaluation.protocol import EvalCase
from models_export.understanding import open_understander, understand
from services.common.artifacts import ArtifactRepository
from services.common.config import artifact_root
from services.query_understanding.engine import QueryUnderstander
from services.retrieval.fusion import FUSION_FILE, KNOWN, UNKNOWN, FusionPolicy

METHODS = ("generated", "lexical", "dense", "hybrid")
LABELS = {"generated": "generator", "lexical": "BM25", "dense": "dense", "hybrid": "hybrid"}
TARGET_GAIN = 0.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifacts", type=Path, default=None, help="artifact root")
    parser.add_argument("--version", default=None, help="version (default CURRENT)")
    parser.add_argument("--split", default="test", choices=("valid", "test"))
    parser.add_argument("--max-cases", type=int, default=1000, help="sampled targets per kind")
    parser.add_argument("--valid-cases", type=int, default=300, help="when choosing weights")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=Path("docs/results"))
    parser.add_argument("--name", default="hybrid_retrieval")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--understand",
        action="store_true",
        help="pass every query through the artifact's query understanding first (the "
        "spelling-corrected text goes to the sources, as the gateway sends it)",
    )


def _weights(w: dict[str, Any]) -> str:
    parts = ", ".join(f"{k} {v:g}" for k, v in w["weights"].items())
    return f"{parts}; k0 {w['k0']:g}"


def _cell(metrics: dict[str, float]) -> str:
    return f"{metrics['recall@10']:.4f} / {metrics['ndcg@10']:.4f}"


def render(doc: dict[str, Any]) -> str:
    """The Markdown report."""
    lines = [
        "# Hybrid candidates: generator, BM25, dense and their fusion",
        "",
        f"**{DERIVED_NOTE}** Noisy variants are made from the same derived queries "
        "(`models_export/noisy_queries.py`).",
        "",
        f"Command: `{doc['command']}`  ",
        f"Artifact: `{doc['version']}` ({doc['build']} build). Split: {doc['split']}, "
        f"{doc['max_cases']} sampled targets per query kind (seed {doc['seed']}), the same "
        "targets in every row of a kind. Machine: "
        f"{doc['machine']}. Total time: {doc['seconds']:.0f} s.  ",
        "Queries: "
        + (
            "passed through the artifact's query understanding first (the spelling-"
            "corrected text goes to every source, as the gateway sends it).  "
            if doc.get("understood")
            else "sent to the sources as they are.  "
        ),
        "Fusion: weighted RRF with one weight set for queries whose terms are all in the "
        f"catalog vocabulary ({_weights(doc['fusion'][KNOWN])}) and one for queries with an "
        f"unknown term ({_weights(doc['fusion'][UNKNOWN])}), {doc['fusion_source']}. Every "
        "source hands its top 20 to the fusion, as served. 'unknown' = cases with an unknown "
        "term.",
        "",
        "Cells are Recall@10 / NDCG@10. 'gain' = hybrid NDCG@10 over the best single source; "
        f"the target is >= +{TARGET_GAIN:.0%} on every class and never below BM25.",
        "",
        "| class | n | unknown | generator | BM25 | dense | hybrid | gain vs best | >= BM25 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in doc["rows"]:
        m = row["methods"]
        singles = {k: v["ndcg@10"] for k, v in m.items() if k != "hybrid"}
        best = max(singles.values()) if singles else 0.0
        hyb = m["hybrid"]["ndcg@10"]
        gain = (hyb / best - 1.0) if best > 0 else float("nan")
        lex_ok = "yes" if "lexical" not in m or hyb >= m["lexical"]["ndcg@10"] else "no"
        cells = [_cell(m[k]) if k in m else "n/a" for k in METHODS]
        lines.append(
            f"| {row['class']} | {row['n']} | {row['unknown_terms']} | "
            + " | ".join(cells)
            + f" | {gain:+.1%} | {lex_ok} |"
        )
    lines += ["", "<!-- hand-written notes below are kept when this file is regenerated -->"]
    return "\n".join(lines) + "\n"


def understood(classes: list[QueryClass], qu: QueryUnderstander) -> list[QueryClass]:
    """``classes`` with every query replaced by its spelling-corrected form."""
    out = []
    for qc in classes:
        texts = [c.request.query or "" for c in qc.cases]
        fixed = [q for q, _ in understand(qu, texts)]
        cases = [
            EvalCase(dataclasses.replace(c.request, query=q), c.target)
            for c, q in zip(qc.cases, fixed, strict=True)
        ]
        out.append(dataclasses.replace(qc, cases=cases))
    return out


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    root = args.artifacts if args.artifacts is not None else artifact_root()
    arts = ArtifactRepository(root).open(args.version)
    version_dir = root / arts.version
    data = load_from_dir(version_dir, with_embeddings=False)
    sources = open_sources(version_dir, threads=args.threads)
    kinds = [k for k in QUERY_KINDS if k in data.query_kinds()]
    noises = (CLEAN, *NOISE_KINDS)
    show = not args.no_progress
    if arts.has(FUSION_FILE):
        policy = FusionPolicy.from_dict(json.loads(arts.path(FUSION_FILE).read_text()))
        fusion_source = f"chosen on validation by the artifact build, `{FUSION_FILE}`"
    else:
        policy, _, _ = choose_on_validation(
            data, sources, noises, (False, True), args.valid_cases, args.seed, show
        )
        fusion_source = f"chosen now on {args.valid_cases} validation targets per kind"
    classes = query_classes(
        data, args.split, kinds, noises, (False, True), args.max_cases, args.seed, sources.encode
    )
    if args.understand:
        classes = understood(classes, open_understander(root, arts.version))
    runs = run_classes(sources, classes, SERVED_DEPTH, show)
    rows = score_classes(runs, policy)
    command = (
        "python -m models_export evaluate-hybrid "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in (
                ("version", arts.version),
                ("split", args.split),
                ("max_cases", args.max_cases),
                ("seed", args.seed),
                ("name", args.name),
            )
        )
        + (" --understand" if args.understand else "")
    )
    doc = {
        "command": command,
        "version": arts.version,
        "build": arts.manifest.config.get("build", "?"),
        "split": args.split,
        "max_cases": args.max_cases,
        "seed": args.seed,
        "queries_derived": True,
        "machine": f"{platform.machine()}, 2 CPU cores, no GPU, "
        f"CPython {platform.python_version()}",
        "fusion": policy.to_dict(),
        "fusion_source": fusion_source,
        "sources": sources.names,
        "understood": bool(args.understand),
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = args.out_dir / f"{args.name}.md"
    notes = ""
    if md.is_file():
        old = md.read_text()
        marker = "<!-- hand-written notes below are kept when this file is regenerated -->"
        notes = old.split(marker, 1)[1].lstrip("\n") if marker in old else ""
    md.write_text(render(doc) + notes)
    print(f"hybrid evaluation of {arts.version} on {args.split}: {len(rows)} classes -> {md}")
    return 0
