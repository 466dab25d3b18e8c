"""``python -m models_export tokenizers``: our RQ-OPQ SIDs against the published tokenizers.

Writes ``<out>.md`` and ``<out>.json`` (default ``docs/results/tokenizer_comparison``):
distinct SIDs before/after collision resolution, per-level utilisation and entropy,
reconstruction error, and how well the first token groups items of one category.
The published indexes have no codebooks here, so they have no reconstruction error.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from models_export import dataset_files, embeddings, ingest, semantic_ids
from models_export.dataset_files import DataInputError, DatasetFiles
from models_export.result_files import write_results

PUBLISHED = ["rkmeans_native", "rqvae_native", "letter_native", "rkmeans_zcr", "rqvae_zcr"]

# name -> config; the first one is the pipeline default, the others are the ablation.
CONFIGS: dict[str, semantic_ids.SidConfig] = {
    "default": semantic_ids.SidConfig(),
    "published vocabulary size (4x256)": semantic_ids.SidConfig(rq_levels=(256, 256)),
    "text only, nearest centroid": semantic_ids.SidConfig(capacity_slack=0.0, collab_weight=0.0),
    "text only, balanced": semantic_ids.SidConfig(collab_weight=0.0),
    "balanced + collab 0.5": semantic_ids.SidConfig(collab_weight=0.5),
    "wide first level": semantic_ids.SidConfig(rq_levels=(1024, 1024)),
    "RQ 256-1024": semantic_ids.SidConfig(rq_levels=(256, 1024)),
    "5 tokens": semantic_ids.SidConfig(rq_levels=(256, 1024, 1024)),
    "residual k-means only (ours)": semantic_ids.SidConfig(
        rq_levels=(256, 256, 256, 256), opq_subspaces=0, capacity_slack=0.0, collab_weight=0.0
    ),
}


def category_purity(codes: np.ndarray, items: Sequence[ingest.Item], depth: int) -> float:
    """Share of items whose first token's majority category (first ``depth`` levels) is theirs.

    1.0 means every first-level code holds items of one category only.
    """
    labels = [" > ".join(i.categories[1 : 1 + depth]) for i in items]
    groups: dict[int, Counter[str]] = defaultdict(Counter)
    for code, label in zip(codes[:, 0].tolist(), labels, strict=True):
        groups[code][label] += 1
    majority = sum(c.most_common(1)[0][1] for c in groups.values())
    return round(majority / len(items), 4)


def _published_row(name: str, path: Path, items: Sequence[ingest.Item]) -> dict[str, Any]:
    codes, sizes = semantic_ids.load_published_index(path, items)
    stats = semantic_ids.sid_stats(codes, sizes)
    return {
        "name": f"published {name}",
        "source": str(path),
        "stats": stats,
        "category_purity_l2": category_purity(codes, items, 1),
        "category_purity_l3": category_purity(codes, items, 2),
    }


def _ours_row(
    name: str,
    config: semantic_ids.SidConfig,
    vectors: np.ndarray,
    histories: list[list[int]],
    items: Sequence[ingest.Item],
) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = semantic_ids.build_semantic_ids(vectors, config, histories)
    seconds = time.perf_counter() - t0
    report = result.report
    return {
        "name": name,
        "method": report["method"],
        "config": asdict(config),
        "stats_before": report["before_resolution"],
        "stats": report["after_resolution"],
        "moved_items": report["moved_items"],
        "moved_two_levels": report["moved_two_levels"],
        "reconstruction_error": report["reconstruction_error_after"],
        "reconstruction_error_before": report["reconstruction_error_before"],
        "category_purity_l2": category_purity(result.codes, items, 1),
        "category_purity_l3": category_purity(result.codes, items, 2),
        "fit_seconds": round(seconds, 2),
    }


def _levels(stats: dict[str, Any], key: str, fmt: str) -> str:
    return " / ".join(format(level[key], fmt) for level in stats["levels"])


def render_markdown(result: dict[str, Any]) -> str:
    """The comparison as a Markdown page."""
    lines = [
        f"# Semantic-ID tokenizer comparison ({result['dataset']}, {result['items']:,} items)",
        "",
        f"Produced by: `{result['command']}`",
        f"on {result['machine']} in {result['seconds']:.0f} s "
        f"(embeddings: {result['embedding_source']}).",
        "",
        "Our SIDs: all-MiniLM-L6-v2 item embeddings (title, brand, category path, first "
        f"{result['text_config']['max_description_words']} description words) quantised by "
        "RQ-OPQ (residual k-means levels, then OPQ + PQ on the remaining residual), collisions "
        "removed by minimum-cost reassignment of the last level (no counter token). "
        f"Published rows are read from `indexes/*/{result['dataset'].rsplit('/', 1)[-1]}"
        ".index.json`; their codebook size "
        "is taken as 256 per level. No search queries are involved here.",
        "",
        "| tokenizer | tokens | vocab | distinct before | distinct after | moved | "
        "utilisation per level | norm. entropy per level | rel. recon. error | "
        "L1 purity (cat2 / cat3) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["ours"]:
        stats, before = row["stats"], row["stats_before"]
        lines.append(
            f"| {row['name']}: {row['method']} | {stats['depth']} | {stats['vocabulary']} | "
            f"{before['distinct']:,} | {stats['distinct']:,} | {row['moved_items']} | "
            f"{_levels(stats, 'utilisation', '.2f')} | "
            f"{_levels(stats, 'normalised_entropy', '.3f')} | "
            f"{row['reconstruction_error']['relative']:.3f} | "
            f"{row['category_purity_l2']:.2f} / {row['category_purity_l3']:.2f} |"
        )
    for row in result["published"]:
        stats = row["stats"]
        lines.append(
            f"| {row['name']} | {stats['depth']} | {stats['vocabulary']} | "
            f"{stats['distinct']:,} | – | – | {_levels(stats, 'utilisation', '.2f')} | "
            f"{_levels(stats, 'normalised_entropy', '.3f')} | – | "
            f"{row['category_purity_l2']:.2f} / {row['category_purity_l3']:.2f} |"
        )
    lines += [
        "",
        "Columns: *distinct before* = distinct SIDs straight out of the quantiser (for the "
        "published `*_native` indexes, as published; the `*_zcr` indexes are already "
        "collision-free); *distinct after* = after our collision resolution; *moved* = items "
        "whose last token was reassigned; *utilisation* = codes used / codebook size; "
        "*norm. entropy* = entropy of the level's token distribution / log2(codebook size); "
        "*rel. recon. error* = mean ||x - x̂||² / mean ||x||² of the quantised input "
        "(the fused text+collaborative vector for the collab row); *L1 purity* = share of "
        "items whose first token's majority category (2nd / 2nd+3rd level of the path) "
        "is their own.",
        "",
        "## Reading",
        "",
    ]
    lines += [f"- {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"


def _notes(result: dict[str, Any]) -> list[str]:
    default = result["ours"][0]
    letter = next(r for r in result["published"] if r["name"].endswith("letter_native"))
    d_before = default["stats_before"]["distinct"]
    l_before = letter["stats"]["distinct"]
    n = default["stats"]["items"]
    notes = [
        f"Default ({default['method']}): {d_before:,} distinct of {n:,} before resolution "
        f"({'more' if d_before > l_before else 'NOT more'} than LETTER's {l_before:,}), "
        f"{default['stats']['distinct']:,} after ({default['moved_items']} items moved), "
        f"{default['stats']['depth']} tokens per item.",
        f"{result['identical_text_items']} items have a text identical to another item's "
        "(title, brand, categories and description), and "
        f"{result['near_duplicate_items']['0.99']} have a neighbour at cosine > 0.99 in the "
        "MiniLM space (mostly size/gauge variants of one product): a nearest-centroid "
        "quantiser of the text alone must give such items the same code. Balanced "
        "(capacity-constrained) assignment and the collaborative signal are what separate "
        "them before resolution; the collision resolution does the rest.",
        "LETTER's first token groups categories less than ours (L1 purity "
        f"{letter['category_purity_l2']:.2f} vs {default['category_purity_l2']:.2f} for our "
        "default). Our default gets its extra distinctness from a wide second level (2048 "
        "codes under a 256-code first level): its vocabulary is "
        f"{default['stats']['vocabulary']:,} tokens against the published indexes' 1,024. "
        "At the published vocabulary size (4x256 row) ours is NOT more distinct than LETTER.",
    ]
    for row in result["ours"][1:]:
        notes.append(
            f"{row['name']} ({row['method']}): {row['stats_before']['distinct']:,} distinct "
            f"before, {row['stats']['distinct']:,} after, vocab {row['stats']['vocabulary']}, "
            f"relative reconstruction error {row['reconstruction_error']['relative']:.3f}."
        )
    return notes


def compare(data: DatasetFiles, text_config: embeddings.TextConfig) -> dict[str, Any]:
    """Run every configuration and read every published index of dataset ``data``."""
    if not data.has_text:
        raise DataInputError(
            f"the tokenizer comparison embeds item text: dataset {data.name} has no item file "
            f"({data.hint})"
        )
    t0 = time.perf_counter()
    result = ingest.ingest_dataset(data)
    items, users = result.items, result.users
    emb = embeddings.embed_items(items, text_config)
    row = {item.item_id: i for i, item in enumerate(items)}
    histories = [[row[i] for i in u.train_history] for u in users]
    texts = Counter((i.title, i.brand, tuple(i.categories), i.description) for i in items)
    sims = emb.vectors @ emb.vectors.T
    np.fill_diagonal(sims, -1.0)
    nearest = sims.max(axis=1)
    ours = []
    for name, config in CONFIGS.items():
        print(f"fitting {name} ...", flush=True)
        ours.append(_ours_row(name, config, emb.vectors, histories, items))
    published = [
        _published_row(name, data.index_path(name), items)
        for name in PUBLISHED
        if data.index_path(name).is_file()
    ]
    out: dict[str, Any] = {
        "dataset": data.name,
        "items": len(items),
        "identical_text_items": sum(c - 1 for c in texts.values() if c > 1),
        "near_duplicate_items": {str(t): int((nearest > t).sum()) for t in (0.999, 0.99, 0.95)},
        "embedding_source": "cache" if emb.cache_hit else "computed",
        "embedding_cache_key": emb.cache_key,
        "text_config": asdict(text_config),
        "ours": ours,
        "published": published,
        "derived_queries_used": False,
    }
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["notes"] = _notes(out)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI: ``python -m models_export tokenizers``."""
    dataset_files.add_arguments(parser, explicit_files=False)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("docs/results/tokenizer_comparison"),
        help="output path without suffix (.md and .json are written)",
    )


def run(args: argparse.Namespace) -> int:
    result = compare(dataset_files.from_args(args), embeddings.TextConfig())
    result["command"] = "python -m models_export " + shlex.join(sys.argv[1:])
    result["machine"] = f"{platform.machine()} CPU, 2 cores, faiss threads = 1"
    write_results(args.out, result, render_markdown(result))
    default = result["ours"][0]
    print(
        f"tokenizers: default {default['method']} distinct "
        f"{default['stats_before']['distinct']} -> {default['stats']['distinct']} of "
        f"{result['items']}; wrote {args.out}.md/.json in {result['seconds']:.0f}s"
    )
    return 0
