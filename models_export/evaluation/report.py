"""JSON and Markdown outputs of an evaluation run (every output says the queries are derived).

The Markdown is rendered from the JSON document alone, so it can be re-rendered from a saved
result (:func:`render_file`) without re-running the evaluation.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from models_export.evaluation.harness import DERIVED_NOTE
from models_export.evaluation.metrics import METRIC_NAMES
from models_export.evaluation.suite import SuiteRun
from models_export.result_files import write_markdown, write_results

# Independent reference run quoted in the issue (test split): (mode, query kind, method) ->
# (Recall@10, NDCG@10 or None where not quoted).
REFERENCE_TEST: dict[tuple[str, str | None, str], tuple[float, float | None]] = {
    ("search", "category", "bm25"): (0.522, 0.296),
    ("search", "category", "dense"): (0.376, 0.212),
    ("recommendation", None, "popularity"): (0.023, None),
    ("recommendation", None, "history-mean"): (0.075, None),
    ("recommendation", None, "sasrec"): (0.099, 0.071),
}


def _machine() -> str:
    return (
        f"{platform.machine()} {os.cpu_count()} CPU cores, {platform.python_implementation()} "
        f"{platform.python_version()}"
    )


def results_dict(run: SuiteRun, command: str, title: str = "Baselines") -> dict[str, Any]:
    """The JSON document of one run."""
    return {
        "title": title,
        "queries_derived": True,
        "note": DERIVED_NOTE,
        "command": command,
        "machine": _machine(),
        "artifact_version": run.source,
        "protocol": run.protocol(),
        "config": run.config,
        "choices_on_valid": run.choices,
        "build_seconds": run.build_seconds,
        "total_seconds": round(run.total_seconds, 1),
        "results": [r.to_dict() for r in run.rows],
    }


def _short(metric: str) -> str:
    name, k = metric.split("@")
    return f"{'R' if name == 'recall' else 'NDCG'}@{k}"


def _block(row: dict[str, Any]) -> str:
    kind = row["query_kind"]
    return f"{row['mode']} / {kind} (derived)" if kind else str(row["mode"])


def _overview(rows: list[dict[str, Any]], split: str) -> str:
    """Blocks x methods, R@10 / NDCG@10 per cell, n/a where the mode does not apply."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    blocks = list(dict.fromkeys(_block(r) for r in rows if r["split"] == split))
    cell = {(_block(r), r["method"]): r for r in rows if r["split"] == split}
    out = [
        "| Mode / queries | n | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for b in blocks:
        n = next(r["n"] for (bb, _), r in cell.items() if bb == b)
        vals = []
        for m in methods:
            r = cell.get((b, m))
            met = r["metrics"] if r else None
            vals.append("n/a" if met is None else f"{met['recall@10']:.4f} / {met['ndcg@10']:.4f}")
        out.append(f"| {b} | {n} | " + " | ".join(vals) + " |")
    return "\n".join(out) + "\n"


def _full(rows: list[dict[str, Any]], split: str) -> str:
    """Every metric of the evaluated (split, block, method) rows."""
    out = [
        "| Mode / queries | Method | " + " | ".join(_short(m) for m in METRIC_NAMES) + " |",
        "|---|---|" + "---|" * len(METRIC_NAMES),
    ]
    for r in rows:
        if r["split"] == split and r["metrics"] is not None:
            vals = " | ".join(f"{r['metrics'][m]:.4f}" for m in METRIC_NAMES)
            out.append(f"| {_block(r)} | {r['method']} | {vals} |")
    return "\n".join(out) + "\n"


def reference_table(rows: list[dict[str, Any]]) -> str:
    """Our test figures next to the independent reference run quoted in the issue."""
    ours = {
        (r["mode"], r["query_kind"], r["method"]): r["metrics"]
        for r in rows
        if r["split"] == "test" and r["metrics"] is not None
    }
    out = [
        "| Mode / queries | Method | R@10 ours | R@10 ref | NDCG@10 ours | NDCG@10 ref |",
        "|---|---|---|---|---|---|",
    ]
    for (mode, kind, method), (r10, n10) in REFERENCE_TEST.items():
        m = ours.get((mode, kind, method))
        if m is None:
            continue
        ref_n = "—" if n10 is None else f"{n10:.3f}"
        block = f"{mode} / {kind}" if kind else mode
        out.append(
            f"| {block} | {method} | {m['recall@10']:.3f} | {r10:.3f} | "
            f"{m['ndcg@10']:.3f} | {ref_n} |"
        )
    return "\n".join(out) + "\n"


def _choices(doc: dict[str, Any]) -> list[str]:
    lines = []
    for name, choice in doc["choices_on_valid"].items():
        if name == "sasrec":
            tr = choice["training"]
            lines.append(
                f"- sasrec: best epoch {tr['best_epoch']} of {tr['epochs_run']} "
                f"({tr['stopped_by']}), valid R@10 {tr['best_valid'].get('recall@10', 0):.4f} / "
                f"NDCG@10 {tr['best_valid'].get('ndcg@10', 0):.4f}, trained in "
                f"{tr['seconds']:.0f} s; config `{json.dumps(choice['config'])}`"
            )
        else:
            grid = ", ".join(f"{k}: {v:.4f}" for k, v in choice["valid_ndcg@10"].items())
            lines.append(f"- {name} = **{choice['chosen']}** (valid NDCG@10 — {grid})")
    return lines


def markdown(doc: dict[str, Any]) -> str:
    """The Markdown report of one run, from its JSON document."""
    rows: list[dict[str, Any]] = doc["results"]
    lines = [
        f"# {doc['title']}\n",
        f"**{DERIVED_NOTE}** Relevance on real queries is not measured here.\n",
        f"Produced by:\n\n```\n{doc['command']}\n```\n",
        f"Machine: {doc['machine']}. Artifact version: `{doc['artifact_version']}`. "
        f"Total time: {doc['total_seconds']:.0f} s.\n",
        "## Protocol\n",
    ]
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in doc["protocol"].items() if k != "note"]
    lines.append(
        "- n/a: the method does not use the inputs of that mode (BM25 and dense read "
        "no history, so they have no search+history cell; history-only methods have "
        "no search cell; popularity reads neither).\n"
    )
    for split in doc["config"].get("splits", ["valid", "test"]):
        lines.append(f"## {split}: Recall@10 / NDCG@10\n")
        lines.append(_overview(rows, split))
        lines.append(f"### {split}: all metrics\n")
        lines.append(_full(rows, split))
    lines.append("## Test split against the reference run quoted in the issue\n")
    lines.append(reference_table(rows))
    lines.append("## Settings chosen on validation\n")
    lines += _choices(doc)
    lines.append(
        "\nBuild/training seconds per method: "
        + ", ".join(f"{k} {v:.1f}" for k, v in doc["build_seconds"].items())
        + ".\n"
    )
    return "\n".join(lines)


def write_outputs(
    run: SuiteRun, command: str, out_dir: Path, name: str = "baselines", title: str = "Baselines"
) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.json`` and ``<out_dir>/<name>.md``."""
    doc = results_dict(run, command, title)
    return write_results(out_dir / name, doc, markdown(doc))


def render_file(json_path: Path) -> Path:
    """Re-render ``<name>.md`` next to a saved ``<name>.json`` (keeps hand-written notes)."""
    mpath = json_path.with_suffix(".md")
    write_markdown(mpath, markdown(json.loads(json_path.read_text())))
    return mpath


def summary_line(run: SuiteRun, split: str = "test") -> str:
    """One line with R@10/NDCG@10 of every evaluated (mode, kind, method) on ``split``."""
    parts = [
        f"{r.method}[{r.mode}{'/' + r.query_kind if r.query_kind else ''}] "
        f"R@10 {r.metrics['recall@10']:.3f} N@10 {r.metrics['ndcg@10']:.3f}"
        for r in run.rows
        if r.split == split and r.metrics is not None
    ]
    return f"{split} (derived queries): " + "; ".join(parts)
