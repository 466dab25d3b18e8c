"""Faults under load (``loadtest.faults``), bounded: the optional stages and Redis killed
and restarted mid-run, and the gateway stopped with SIGTERM mid-burst."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.faults import RECOVERY_TARGET_S, run

pytestmark = pytest.mark.e2e


def test_optional_stages_and_redis_down_cost_no_5xx_and_recover(artifact_root: Path) -> None:
    doc = run(artifact_root, 1.5, ["query_understanding", "ranking", "redis"])
    rows = {r["scenario"]: r for r in doc["rows"]}
    for name in ("query_understanding", "ranking", "redis (restarted empty)"):
        row = rows[f"kill -9 {name}"]
        assert row["requests"] > 10, row
        assert row["5xx_share"] == 0.0, row
        assert row["recovery_after_serving_s"] is not None, row
        assert row["recovery_after_serving_s"] <= RECOVERY_TARGET_S, row
    # the stages really were down: answers said so
    assert rows["kill -9 query_understanding"]["degraded_share"] > 0.5
    assert rows["kill -9 ranking"]["degraded_share"] > 0.5
    for name in ("query_understanding", "ranking", "gateway"):
        row = rows[f"SIGTERM {name} mid-burst"]
        assert row["failed"] == 0, row
    assert rows["SIGTERM gateway mid-burst"]["exit_code"] in (0, -15)
    # straight to each service: every call it had accepted when told to stop completes
    for name in ("query_understanding", "ranking"):
        row = rows[f"SIGTERM {name} with calls in flight"]
        assert row["in_flight"] >= 1 and row["in_flight_failed"] == 0, row
