"""The ops files (deploy/) pass the real tools: promtool for Prometheus's config, rules and their tests."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="SKIPPED: no promtool on PATH (apt-get install prometheus): the rules are unchecked",
)


def promtool(*args: str) -> str:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=PROMETHEUS, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@needs_promtool
def test_the_scrape_config_is_valid() -> None:
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")


@needs_promtool
def test_the_rules_are_valid() -> None:
    assert "SUCCESS" in promtool(
        "check", "rules", *(str(p) for p in sorted((PROMETHEUS / "rules").glob("*.yml")))
    )


@needs_promtool
def test_every_alert_is_shown_firing_and_not_firing_by_its_unit_test() -> None:
    assert "SUCCESS" in promtool(
        "test", "rules", *(str(p) for p in sorted((PROMETHEUS / "tests").glob("*.yml")))
    )
    rules = (PROMETHEUS / "rules" / "rankstream.yml").read_text()
    tests = (PROMETHEUS / "tests" / "rankstream_test.yml").read_text()
    alerts = [
        line.split(":", 1)[1].strip() for line in rules.splitlines() if line.strip().startswith("- alert:")
    ]
    assert len(alerts) == 7
    for alert in alerts:
        tested = [line for line in tests.splitlines() if line.strip() == f"alertname: {alert}"]
        assert len(tested) >= 2, f"{alert}: a test that fires it and one that does not"


def test_the_rule_glob_loads_no_test_file() -> None:
    assert not list((PROMETHEUS / "rules").glob("*test*"))
    assert "rules/*.yml" in (PROMETHEUS / "prometheus.yml").read_text()


def test_the_dashboard_queries_the_provisioned_datasource() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "rankstream.json").read_text())
    datasource = (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert "uid: prometheus" in datasource
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "prometheus", panel["title"]
        assert panel["targets"] and all(target["expr"] for target in panel["targets"]), panel["title"]


def test_every_alert_links_a_runbook_that_exists() -> None:
    rules = (PROMETHEUS / "rules" / "rankstream.yml").read_text()
    operations = (DEPLOY.parent / "docs" / "OPERATIONS.md").read_text()
    headings = {
        "-".join(line.removeprefix("### ").lower().split())
        for line in operations.splitlines()
        if line.startswith("### ")
    }
    anchors = [
        line.split("#", 1)[1].strip() for line in rules.splitlines() if "runbook: docs/OPERATIONS.md#" in line
    ]
    assert len(anchors) == 7 and set(anchors) <= headings
