"""The Prometheus config and rules pass promtool: syntax, and the alerts' own unit tests
(``deploy/prometheus/rules_test.yml``: each alert fires on the series it is for, and not
before its ``for`` window)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed (apt-get install prometheus)")
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, check=False)


def test_config_and_rules_are_valid(tmp_path: Path) -> None:
    # the config names the rules where the container mounts them: point it here
    config = (PROM / "prometheus.yml").read_text().replace("/etc/prometheus/", f"{PROM}/")
    (tmp_path / "prometheus.yml").write_text(config)
    checked = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = promtool("check", "rules", "rules.yml")
    assert rules.returncode == 0 and "SUCCESS" in rules.stdout, rules.stdout + rules.stderr


def test_alerts_fire_on_their_series() -> None:
    result = promtool("test", "rules", "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "groups:\n  - name: x\n    rules:\n      - record: a:b\n"
        "        expr: histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m]))\n"
    )
    assert promtool("check", "rules", str(bad), cwd=tmp_path).returncode != 0
