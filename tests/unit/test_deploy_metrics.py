"""deploy/prometheus: the alert rules load in promtool and pass their unit tests; the scrape config is valid."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROM = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool(*args: str) -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: install Debian's prometheus package (apt-get install prometheus); "
                    ".ci/run does it on CI")
    p = subprocess.run([path, *args], cwd=PROM, capture_output=True, timeout=60)
    out = (p.stdout + p.stderr).decode()
    assert p.returncode == 0, out
    return out


def test_alert_rules_check() -> None:
    assert "SUCCESS: 10 rules found" in promtool("check", "rules", "alerts.yml")


def test_alert_rules_unit_tests() -> None:
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")


def test_scrape_config_is_valid() -> None:
    promtool("check", "config", "prometheus.yml")
