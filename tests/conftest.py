"""Fixtures: a private Redis, the LLM simulator and a worker, all as real processes.

Nothing here sleeps on a guess: every wait polls for the thing it needs, with a deadline.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from support.tls import Certificates, make_certificates

from rankstream.dev.processes import rankstream, stop, wait_for, wait_for_worker
from rankstream.dev.redis_server import RedisServer, find_redis_server, free_port
from rankstream.exceptions import RedisUnavailable
from rankstream.settings import Settings

__all__ = ["wait_for"]  # tests import it from here, beside the fixtures


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A test CA, a server certificate for 127.0.0.1 and localhost, a client pair, a second CA."""
    return make_certificates(tmp_path_factory.mktemp("redis-tls"))


@pytest.fixture
def tls_redis_server(request: pytest.FixtureRequest) -> str:
    """A redis-server built with TLS, or this test is skipped, saying which and why."""
    try:
        return find_redis_server(tls=True)
    except RedisUnavailable as exc:
        pytest.skip(f"{request.node.nodeid} NOT RUN: it needs a redis-server that speaks TLS: {exc}")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """REDIS_URL if set (tests only add keys of their own queues), else a private server."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def connection(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def make_settings(redis_url: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = {"redis_url": redis_url, "queue": f"test-{uuid.uuid4().hex[:8]}"}
    return Settings.model_validate({**base, **overrides})


@pytest.fixture
def settings(redis_url: str) -> Settings:
    """Settings on a queue of this test's own."""
    return make_settings(redis_url)


class Process:
    """A rankstream subcommand running as a child process."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.process = rankstream(
            args, {**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> str:
        stop(self.process)
        return self.process.stdout.read().decode(errors="replace") if self.process.stdout else ""


class Simulator(Process):
    def __init__(self, ttft: float = 0.05, tokens_per_second: float = 400.0) -> None:
        self.port = free_port()
        super().__init__(
            [
                "llm-sim",
                "--port",
                str(self.port),
                "--ttft",
                str(ttft),
                "--tokens-per-second",
                str(tokens_per_second),
            ],
            {},
        )
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.admin = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5)
        wait_for(self._answers, 20, "the simulator to answer")

    def _answers(self) -> bool:
        if not self.alive():
            raise AssertionError(f"simulator exited: {self.stop()}")
        try:
            return self.admin.get("/v1/models").status_code == 200
        except httpx.TransportError:
            return False

    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.admin.get("/sim/requests").json()
        return result

    def fault(self, name: str, count: int | None = None) -> None:
        self.admin.post("/sim/faults", json={"fault": name, "count": count}).raise_for_status()

    def refuse(self, *forms: str) -> None:
        """Answer these ways of asking for JSON with an error (json_schema, json_object, tools)."""
        self.admin.post("/sim/formats", json={"refuse": list(forms)}).raise_for_status()


class WorkerProcess(Process):
    def __init__(self, settings: Settings, sim: Simulator, **env: str) -> None:
        self.settings = settings
        self.metrics_port = free_port()
        super().__init__(
            ["worker"],
            {
                "REDIS_URL": settings.redis_url or "",
                "OPENAI_BASE_URL": sim.base_url,
                "RANKSTREAM_QUEUE": settings.queue,
                "RANKSTREAM_METRICS_PORT": str(self.metrics_port),
                **env,
            },
        )
        try:
            wait_for_worker(settings, self.process)
        except RuntimeError:
            raise AssertionError(f"worker exited: {self.stop()}") from None


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    simulator = Simulator()
    yield simulator
    simulator.stop()


@pytest.fixture(scope="module")
def module_settings(redis_url: str) -> Settings:
    return make_settings(redis_url)


@pytest.fixture(scope="module")
def worker(module_settings: Settings, sim: Simulator) -> Iterator[WorkerProcess]:
    process = WorkerProcess(module_settings, sim)
    yield process
    process.stop()


def finished_stream(connection: redis.Redis, job_id: str) -> list[dict[str, Any]]:
    """The whole stream of a job once it has its terminal event; asserts there is exactly one."""
    from producer.core import parse_entry
    from rankstream import keys

    def read() -> list[Any] | None:
        entries = connection.xrange(keys.events(job_id))
        return entries if entries and entries[-1][1][b"type"] in (b"done", b"error") else None

    entries = wait_for(read, 30, f"job {job_id} to end")
    stream = [parse_entry(entry_id, fields) for entry_id, fields in entries]
    assert sum(e.terminal for e in stream) == 1, [e.type for e in stream]
    return [{"type": e.type, "id": e.id, **e.data} for e in stream]


def ranked_with_fault(
    sim: Simulator,
    settings: Settings,
    connection: redis.Redis,
    fault: str,
    count: int | None = 1,
    **overrides: Any,
) -> list[dict[str, Any]]:
    """The example's whole stream, with `fault` switched on for its next `count` LLM calls."""
    from producer import enqueue
    from rankstream.dev import example

    sim.fault(fault, count)
    handle = enqueue(example.example_request(**overrides), settings=settings)
    return finished_stream(connection, handle.job_id)


def items(stream: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in stream if e["type"] == "item"]


def assert_complete_ranking(stream: list[dict[str, Any]]) -> None:
    """The example's ten products, ranked 1 to 10, each once, then `done`."""
    ranked = items(stream)
    assert [i["rank"] for i in ranked] == list(range(1, 11))
    assert sorted(i["product_id"] for i in ranked) == sorted(str(n) for n in range(1, 11))
    assert stream[-1]["type"] == "done" and stream[-1]["count"] == 10


def streaming(connection: redis.Redis, job_ids: list[str]) -> bool:
    """Each of these jobs has an item on its stream (and so is mid-stream, or past it)."""
    from rankstream import keys

    return all(
        any(fields[b"type"] == b"item" for _, fields in connection.xrange(keys.events(job_id)))
        for job_id in job_ids
    )
