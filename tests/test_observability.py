"""Every dashboard panel and the alerts, proven against a real Prometheus scraping a real worker and gateway.

Redis, the simulator, a worker and a gateway run as processes; Debian's `prometheus` scrapes
them every second with the project's own rules (deploy/prometheus/rules). After a few rankings
through the gateway, every expression of the Grafana dashboard (deploy/grafana) is queried
through Prometheus's HTTP API and must return data. A fault drill then makes the "first item
slow" and "error ratio" alerts fire in that Prometheus (their `for:` set to 0 for the drill;
promtool's unit tests cover the `for:` durations).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from conftest import Simulator, WorkerProcess, make_settings
from support.gateway import Gateway
from test_gateway import events_url, read_sse, start

from rankstream.dev.processes import stop, wait_for
from rankstream.dev.redis_server import free_port
from rankstream.settings import Settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROMETHEUS_BIN = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS_BIN is None,
    reason="SKIPPED: no prometheus on PATH (apt-get install prometheus): dashboards and alerts are unproven",
)


class Prometheus:
    """A real Prometheus scraping `targets` ({job: "host:port"}) every second, with our rules."""

    def __init__(self, tmp: Path, targets: dict[str, str], rules: Path) -> None:
        assert PROMETHEUS_BIN is not None
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.process = subprocess.Popen(
            [
                PROMETHEUS_BIN,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for(self._ready, 30, "prometheus to be ready")

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def firing(self) -> set[str]:
        alerts = httpx.get(f"{self.url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return {alert["labels"]["alertname"] for alert in alerts if alert["state"] == "firing"}

    def up(self, job: str) -> bool:
        return any(r["value"][1] == "1" for r in self.query(f'up{{job="{job}"}}'))

    def stop(self) -> None:
        stop(self.process)


def dashboard_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "rankstream.json").read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


@pytest.fixture(scope="module")
def observed(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Prometheus, Gateway]]:
    settings = make_settings(redis_url)
    sim = Simulator()
    worker = WorkerProcess(settings, sim)
    gateway = Gateway(settings)
    prometheus = Prometheus(
        tmp_path_factory.mktemp("prometheus"),
        {
            "rankstream-worker": f"127.0.0.1:{worker.metrics_port}",
            "rankstream-gateway": f"127.0.0.1:{gateway.port}",
        },
        DEPLOY / "prometheus" / "rules" / "rankstream.yml",
    )
    try:
        wait_for(
            lambda: prometheus.up("rankstream-worker") and prometheus.up("rankstream-gateway"), 20, "scrapes"
        )
        for _ in range(6):
            read_sse(events_url(gateway, start(gateway)))
        # rates want two scrapes after the jobs, and the recording rules a turn after that
        wait_for(
            lambda: prometheus.query("rankstream:time_to_first_item_seconds:p50"), 20, "the recording rules"
        )
        yield prometheus, gateway
    finally:
        prometheus.stop()
        gateway.stop()
        worker.stop()
        sim.stop()


@pytest.mark.parametrize(("title", "expr"), dashboard_expressions(), ids=lambda value: str(value)[:60])
def test_every_dashboard_panel_returns_data(
    observed: tuple[Prometheus, Gateway], title: str, expr: str
) -> None:
    prometheus, _ = observed
    assert wait_for(lambda: prometheus.query(expr), 10, f"{title!r}: {expr}")


def test_a_fault_drill_fires_first_item_slow_and_error_ratio(
    redis_url: str, tmp_path: Path, connection: redis.Redis
) -> None:
    settings: Settings = make_settings(redis_url)
    rules = tmp_path / "drill.yml"
    rules.write_text(
        re.sub(r"for: \S+", "for: 0s", (DEPLOY / "prometheus" / "rules" / "rankstream.yml").read_text())
    )
    slow = Simulator(ttft=5.5, tokens_per_second=400)  # every first item later than the 5 s threshold
    worker = WorkerProcess(settings, slow, RANKSTREAM_MAX_ATTEMPTS="1", RANKSTREAM_CONCURRENCY="8")
    gateway = Gateway(settings)
    prometheus = Prometheus(tmp_path, {"rankstream-worker": f"127.0.0.1:{worker.metrics_port}"}, rules)
    try:
        # rates need a scrape from before the jobs: the histograms' zeros
        wait_for(
            lambda: prometheus.query("rankstream_time_to_first_item_seconds_count"), 20, "a first scrape"
        )
        drilled = {"RankstreamFirstItemSlow", "RankstreamErrorRatioHigh"}
        assert not drilled & prometheus.firing()
        jobs = [start(gateway) for _ in range(4)]
        for job_id in jobs:
            read_sse(events_url(gateway, job_id), timeout=60)
        wait_for(lambda: "RankstreamFirstItemSlow" in prometheus.firing(), 30, "first item slow to fire")
        assert "RankstreamErrorRatioHigh" not in prometheus.firing()

        slow.fault("server_error")  # every call fails, and with one attempt every job does
        for job_id in [start(gateway) for _ in range(4)]:
            assert read_sse(events_url(gateway, job_id), timeout=60)[-1].event == "error"
        wait_for(lambda: "RankstreamErrorRatioHigh" in prometheus.firing(), 30, "error ratio to fire")
    finally:
        prometheus.stop()
        gateway.stop()
        worker.stop()
        slow.stop()
