"""The headless Locust run (``python -m loadtest.run``) against the real stack.

Locust only ever runs in subprocesses: importing it here would monkey-patch pytest's
process with gevent.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from loadtest.local_stack import REPO_ROOT, RedisServer, start_stack
from loadtest.slo_check import read_stats

pytestmark = pytest.mark.e2e

LOOSE_SLO = """
overall: {p99_ms: 10000, max_error_rate: 0.05, min_rps: 1}
requests:
  "/v1/search [bad]": {max_error_rate: 0}
  "/v1/items/{id} [bad]": {max_error_rate: 0}
"""
IMPOSSIBLE_SLO = "overall: {p99_ms: 0.001}\n"
_REQUESTS = re.compile(r"^gensearch_gateway_http_requests_total\{(.*)\} (\S+)$", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def _loadtest(base: str, out: Path, slo: Path, artifacts: Path, duration: str) -> int:
    env = {
        **os.environ,
        # enough bad requests to see in 10 s at 4 users
        "GENSEARCH_LOCUST_SHARE_BAD": "0.2",
        "GENSEARCH_LOCUST_SEED": "11",
        "GENSEARCH_LOCUST_QUERIES": "500",
    }
    cmd = [sys.executable, "-m", "loadtest.run", "--host", base, "--users", "4"]
    cmd += ["--spawn-rate", "4", "--duration", duration, "--out", str(out)]
    cmd += ["--slo", str(slo), "--artifact-dir", str(artifacts)]
    done = subprocess.run(
        cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=90, check=False
    )
    print(done.stdout, done.stderr[-6000:], sep="\n")  # the summary, shown by pytest -rP / -s
    return done.returncode


def _api_statuses(metrics: str) -> dict[int, float]:
    """Requests to ``/v1/...`` routes by status, from the gateway's ``/metrics``."""
    counts: dict[int, float] = {}
    for labels, value in _REQUESTS.findall(metrics):
        found = dict(_LABEL.findall(labels))
        if found.get("route", "").startswith("/v1/"):
            status = int(found["status"])
            counts[status] = counts.get(status, 0.0) + float(value)
    return counts


def test_locust_run_checks_the_slo(
    artifact_root: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    loose, impossible = tmp_path / "loose.yaml", tmp_path / "impossible.yaml"
    loose.write_text(LOOSE_SLO)
    impossible.write_text(IMPOSSIBLE_SLO)
    with ExitStack() as es:
        stack = start_stack(es, artifact_root, logs, redis_url=redis_server.url)
        out = tmp_path / "run"
        assert _loadtest(stack.base, out, loose, artifact_root, "10s") == 0
        assert (out / "report.html").stat().st_size > 0
        rows = {r["Name"]: r for r in read_stats(out / "locust_stats.csv")}
        total = rows["Aggregated"]
        assert int(total["Request Count"]) > 20
        # every request got an acceptable answer: bad ones 4xx, searches 200 with items
        assert int(total["Failure Count"]) == 0
        bad = [r for name, r in rows.items() if name.endswith("[bad]")]
        sent_bad = sum(int(r["Request Count"]) for r in bad)
        assert sent_bad > 0 and all(int(r["Failure Count"]) == 0 for r in bad)
        assert {"/v1/search", "/v1/search [feed]", "/v1/items/{id}"} <= set(rows)
        # ... and the gateway saw them as 4xx (at least as many: Locust drops the
        # requests in flight when the run ends), never a 5xx
        statuses = _api_statuses(stack.metrics_text())
        assert sum(n for s, n in statuses.items() if 400 <= s < 500) >= sent_bad
        assert not any(s >= 500 for s in statuses)

        assert _loadtest(stack.base, tmp_path / "again", impossible, artifact_root, "3s") == 1
