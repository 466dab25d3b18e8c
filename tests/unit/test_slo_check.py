"""The SLO check of Locust's stats CSV: pass, fail, CLI exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.slo_check import DEFAULT_SLO, check_stats_csv, load_slo, main, violations
from tests.support import REPO_ROOT

HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
    "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
    "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)
ROWS = [
    "POST,/v1/search,900,0,20,22,5,140,900,30.0,0.0,20,22,25,27,40,60,90,120,140,140,140",
    "POST,/v1/search [bad],20,0,2,2,1,5,200,0.7,0.0,2,2,2,2,3,4,5,5,5,5,5",
    "GET,/v1/items/{id},80,2,2,3,1,30,250,2.7,0.07,2,2,3,3,5,8,20,30,30,30,30",
    ",Aggregated,1000,2,18,20,1,140,800,33.4,0.07,18,20,22,25,38,55,85,110,140,140,140",
]
SLO = """
overall:
  p99_ms: {p99}
  max_error_rate: 0.01
  min_rps: 20
requests:
  /v1/search:
    p99_ms: 150
  "GET /v1/items/{{id}}":
    max_error_rate: {item_errors}
  Retrieve:
    p99_ms: 1
"""


def _write(tmp_path: Path, p99: float = 500, item_errors: float = 0.05) -> tuple[Path, Path]:
    stats = tmp_path / "locust_stats.csv"
    stats.write_text("\n".join([HEADER, *ROWS]) + "\n")
    slo = tmp_path / "slo.yaml"
    slo.write_text(SLO.format(p99=p99, item_errors=item_errors))
    return stats, slo


def test_a_run_within_its_slo_passes(tmp_path: Path) -> None:
    stats, slo = _write(tmp_path)
    # "Retrieve" has no row: an objective for a request the run did not send is skipped
    assert check_stats_csv(stats, slo) == []


def test_missed_objectives_are_reported(tmp_path: Path) -> None:
    stats, slo = _write(tmp_path, p99=100, item_errors=0.01)
    missed = {(v.target, v.metric): v.actual for v in check_stats_csv(stats, slo)}
    assert missed == {("overall", "p99_ms"): 110.0, ("GET /v1/items/{id}", "max_error_rate"): 0.025}


def test_no_aggregated_row_fails_the_overall_objectives() -> None:
    slo = {"overall": {"p99_ms": 100, "min_rps": 1}}
    assert {v.metric for v in violations([], slo)} == {"p99_ms", "min_rps"}


def test_unknown_objective_is_refused(tmp_path: Path) -> None:
    slo = tmp_path / "slo.yaml"
    slo.write_text("overall:\n  p95_ms: 10\n")
    with pytest.raises(ValueError, match="p95_ms"):
        load_slo(slo)


def test_shipped_slo_file_loads() -> None:
    slo = load_slo(DEFAULT_SLO)
    assert set(slo["overall"]) == {"p99_ms", "max_error_rate", "min_rps"}


def test_cli_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stats, slo = _write(tmp_path)
    assert main([str(stats), "--slo", str(slo)]) == 0
    assert "SLO met" in capsys.readouterr().out
    strict = tmp_path / "strict.yaml"
    strict.write_text("overall:\n  p99_ms: 1\n")
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.slo_check", str(stats), "--slo", str(strict)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "MISSED" in done.stdout
