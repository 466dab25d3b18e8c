"""JSON and Markdown outputs of an evaluation run (every output says the queries are derived)."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models_export.evaluation.harness import DERIVED_NOTE, ResultRow
from models_export.evaluation.metrics import METRIC_NAMES
from models_export.evaluation.suite import SuiteRun

_SHORT = {"recall": "R", "ndcg": "NDCG"}
KEEP_MARKER = "<!-- hand-written notes below are kept when this file is regenerated -->"
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
    import os

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


def _header() -> str:
    cols = [f"{_SHORT[m.split('@')[0]]}@{m.split('@')[1]}" for m in METRIC_NAMES]
    return (
        "| Mode | Queries | Method | "
        + " | ".join(cols)
        + " |\n"
        + "|"
        + "---|" * (3 + len(cols))
        + "\n"
    )


def _row(r: ResultRow) -> str:
    kind = f"{r.query_kind} (derived)" if r.query_kind else "—"
    if r.metrics is None:
        cells = ["n/a"] * len(METRIC_NAMES)
    else:
        cells = [f"{r.metrics[m]:.4f}" for m in METRIC_NAMES]
    return f"| {r.mode} | {kind} | {r.method} | " + " | ".join(cells) + " |\n"


def table(rows: Sequence[ResultRow], split: str) -> str:
    """Markdown table of one split."""
    return _header() + "".join(_row(r) for r in rows if r.split == split)


def markdown(run: SuiteRun, command: str, title: str = "Baselines") -> str:
    """The Markdown report of one run."""
    proto = run.protocol()
    n_by = {(r.split, r.mode, r.query_kind): r.n for r in run.rows}
    lines = [
        f"# {title}\n",
        f"**{DERIVED_NOTE}** Real-query relevance is not measured here.\n",
        f"Produced by:\n\n```\n{command}\n```\n",
        f"Machine: {_machine()}. Artifact version: `{run.source}`. "
        f"Total time: {run.total_seconds:.0f} s.\n",
        "## Protocol\n",
    ]
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in proto.items() if k != "note"]
    lines.append(
        "- n/a: the method does not use the inputs of that mode "
        "(e.g. BM25 ignores history, so it has no search+history row of its own).\n"
    )
    for split in run.config.get("splits", ["valid", "test"]):
        counts = ", ".join(f"{m}/{k or '-'}: {n}" for (s, m, k), n in n_by.items() if s == split)
        lines.append(f"## {split}\n\nQueries per block: {counts}.\n")
        lines.append(table(run.rows, split))
    lines.append(reference_table(run.rows))
    lines.append("## Settings chosen on validation\n")
    for name, choice in run.choices.items():
        if name == "sasrec":
            tr = choice["training"]
            lines.append(
                f"- sasrec: best epoch {tr['best_epoch']} of {tr['epochs_run']} "
                f"({tr['stopped_by']}), valid R@10 {tr['best_valid'].get('recall@10', 0):.4f} / "
                f"NDCG@10 {tr['best_valid'].get('ndcg@10', 0):.4f}, trained in "
                f"{tr['seconds']:.0f} s; config {json.dumps(choice['config'])}"
            )
        else:
            lines.append(f"- {name}: {choice['chosen']} (valid {json.dumps(choice)})")
    lines.append(
        "\nBuild/training seconds per method: "
        + ", ".join(f"{k} {v:.1f}" for k, v in run.build_seconds.items())
        + ".\n"
    )
    return "\n".join(lines)


def reference_table(rows: Sequence[ResultRow]) -> str:
    """Our test figures next to the independent reference run quoted in the issue."""
    ours = {
        (r.mode, r.query_kind, r.method): r.metrics
        for r in rows
        if r.split == "test" and r.metrics is not None
    }
    out = [
        "## Test split against the reference run\n",
        "| Mode | Queries | Method | R@10 ours | R@10 ref | NDCG@10 ours | NDCG@10 ref |",
        "|---|---|---|---|---|---|---|",
    ]
    for (mode, kind, method), (r10, n10) in REFERENCE_TEST.items():
        m = ours.get((mode, kind, method))
        if m is None:
            continue
        ref_n = "—" if n10 is None else f"{n10:.3f}"
        out.append(
            f"| {mode} | {kind or '—'} | {method} | {m['recall@10']:.3f} | {r10:.3f} | "
            f"{m['ndcg@10']:.3f} | {ref_n} |"
        )
    return "\n".join(out) + "\n"


def write_outputs(
    run: SuiteRun, command: str, out_dir: Path, name: str = "baselines", title: str = "Baselines"
) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.json`` and ``<out_dir>/<name>.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out_dir / f"{name}.json", out_dir / f"{name}.md"
    jpath.write_text(json.dumps(results_dict(run, command, title), indent=2) + "\n")
    kept = ""
    if mpath.is_file() and KEEP_MARKER in (old := mpath.read_text()):
        kept = old.split(KEEP_MARKER, 1)[1]
    mpath.write_text(markdown(run, command, title) + "\n" + KEEP_MARKER + kept)
    return jpath, mpath


def summary_line(run: SuiteRun, split: str = "test") -> str:
    """One line with R@10/NDCG@10 of every evaluated (mode, kind, method) on ``split``."""
    parts = [
        f"{r.method}[{r.mode}{'/' + r.query_kind if r.query_kind else ''}] "
        f"R@10 {r.metrics['recall@10']:.3f} N@10 {r.metrics['ndcg@10']:.3f}"
        for r in run.rows
        if r.split == split and r.metrics is not None
    ]
    return f"{split} (derived queries): " + "; ".join(parts)
