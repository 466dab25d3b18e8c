"""Check a Locust run against an SLO file (``loadtest/slo.yaml``).

``python -m loadtest.slo_check OUT/locust_stats.csv --slo loadtest/slo.yaml`` prints a
table of every checked metric and exits 1 when any misses its objective.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

AGGREGATED = "Aggregated"
DEFAULT_SLO = Path(__file__).with_name("slo.yaml")
METRICS = ("p99_ms", "max_error_rate", "min_rps")


@dataclass(frozen=True)
class Check:
    """One objective measured: ``ok`` unless ``actual`` is past ``limit``."""

    target: str  # request name, or "overall"
    metric: str  # one of METRICS
    limit: float
    actual: float

    @property
    def ok(self) -> bool:
        if math.isnan(self.actual):
            return False
        if self.metric == "min_rps":
            return self.actual >= self.limit
        return self.actual <= self.limit


def read_stats(path: Path) -> list[dict[str, str]]:
    """The rows of a Locust ``<prefix>_stats.csv``."""
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def load_slo(path: Path) -> dict[str, Any]:
    """The SLO file: ``overall`` and ``requests`` (name -> objectives) mappings."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping")
    targets = {"overall": data.get("overall") or {}, **(data.get("requests") or {})}
    for target, objectives in targets.items():
        unknown = set(objectives or {}) - set(METRICS)
        if unknown:
            raise ValueError(f"{path}: {target}: unknown objectives {sorted(unknown)}")
    return data


def _number(raw: str | None) -> float:
    try:
        return float(raw) if raw not in (None, "", "N/A") else math.nan
    except ValueError:
        return math.nan


def _measure(row: Mapping[str, str], metric: str) -> float:
    requests = _number(row.get("Request Count"))
    if metric == "p99_ms":
        return _number(row.get("99%"))
    if metric == "max_error_rate":
        return _number(row.get("Failure Count")) / requests if requests > 0 else math.nan
    return _number(row.get("Requests/s"))


def _checks(target: str, row: Mapping[str, str], objectives: Mapping[str, Any]) -> list[Check]:
    return [
        Check(target, metric, float(limit), _measure(row, metric))
        for metric, limit in objectives.items()
    ]


def evaluate(rows: Sequence[Mapping[str, str]], slo: Mapping[str, Any]) -> list[Check]:
    """Every objective of ``slo`` measured on the stats ``rows``. Named objectives match a
    row by ``Name`` (or ``"Type Name"``); names without requests in the run are skipped.
    A run without an ``Aggregated`` row fails each overall objective (actual NaN)."""
    checks: list[Check] = []
    overall = slo.get("overall") or {}
    aggregated = next((r for r in rows if r.get("Name") == AGGREGATED), {})
    checks += _checks("overall", aggregated, overall)
    for name, objectives in (slo.get("requests") or {}).items():
        for row in rows:
            full = f"{row.get('Type', '')} {row.get('Name', '')}"
            if row.get("Name") == AGGREGATED or name not in (row.get("Name"), full):
                continue
            if _number(row.get("Request Count")) > 0:
                checks += _checks(name, row, objectives or {})
    return checks


def violations(rows: Sequence[Mapping[str, str]], slo: Mapping[str, Any]) -> list[Check]:
    """The objectives of ``slo`` the run missed (empty: the run meets its SLO)."""
    return [c for c in evaluate(rows, slo) if not c.ok]


def check_stats_csv(stats_csv: Path, slo_path: Path = DEFAULT_SLO) -> list[Check]:
    """:func:`violations` of the Locust stats file ``stats_csv`` against ``slo_path``."""
    return violations(read_stats(stats_csv), load_slo(slo_path))


def format_table(checks: Sequence[Check]) -> str:
    """A plain-text table of checks with a verdict column."""
    header = ("target", "metric", "limit", "actual", "")
    lines = [header] + [
        (c.target, c.metric, f"{c.limit:g}", f"{c.actual:.4g}", "ok" if c.ok else "MISSED")
        for c in checks
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in lines
    )


def report(checks: Sequence[Check]) -> int:
    """Print the table and a verdict line; the exit code (1: an objective was missed)."""
    print(format_table(checks))
    missed = sum(not c.ok for c in checks)
    print(f"SLO {'MISSED' if missed else 'met'}: {len(checks) - missed}/{len(checks)} ok")
    return 1 if missed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a Locust run against an SLO file.")
    parser.add_argument("stats_csv", type=Path, help="Locust's <prefix>_stats.csv")
    parser.add_argument("--slo", type=Path, default=DEFAULT_SLO, help="SLO YAML file")
    args = parser.parse_args(argv)
    return report(evaluate(read_stats(args.stats_csv), load_slo(args.slo)))


if __name__ == "__main__":
    sys.exit(main())
