"""What every benchmark shares: child processes, medians and percentiles, the table."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import redis
from rq import Worker

from rankstream.dev.processes import stop
from rankstream.dev.redis_server import RedisServer, free_port
from rankstream.queue import ranking_queue
from rankstream.settings import Settings


@dataclass
class Row:
    section: str
    name: str
    value: str
    baseline: str = ""
    ratio: str = ""


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout}s for {what}")
        time.sleep(0.005)


@contextmanager
def redis_server() -> Iterator[str]:
    with RedisServer() as server:
        yield server.url


@contextmanager
def child(args: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield process
    finally:
        stop(process)


@contextmanager
def simulator(ttft: float = 0.0, tokens_per_second: float = 1e9) -> Iterator[str]:
    """The LLM simulator in a process of its own (its CPU is not the worker's); yields its base URL."""
    port = free_port()
    args = ["-m", "rankstream", "llm-sim", "--port", str(port), "--ttft", str(ttft)]
    with child([*args, "--tokens-per-second", str(tokens_per_second)]) as process:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if process.poll() is not None:
                raise RuntimeError("the simulator exited")
            try:
                return httpx.get(f"{url}/v1/models", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 20, "the simulator")
        yield f"{url}/v1"


@contextmanager
def worker_on_own_queue(redis_url: str, llm_url: str, args: list[str], **env: str) -> Iterator[Settings]:
    """A worker process (`args`) on a fresh queue, registered with RQ; yields the queue's settings."""
    settings = Settings.model_validate({"redis_url": redis_url, "queue": f"bench-{uuid.uuid4().hex[:8]}"})
    env = {"REDIS_URL": redis_url, "OPENAI_BASE_URL": llm_url, "RANKSTREAM_QUEUE": settings.queue, **env}
    with child(args, env) as process:
        queue = ranking_queue(redis.Redis.from_url(redis_url), settings)

        def registered() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"the worker exited with status {process.returncode}")
            return Worker.count(queue=queue) > 0

        wait_for(registered, 30, "the worker")
        yield settings


def catalogue_request(n: int) -> dict[str, Any]:
    """A ranking request with n candidates (the example's ten, then numbered ones)."""
    from rankstream.dev import example

    names = [*example.PRODUCTS, *(f"Generic product {i} - plain and unremarkable" for i in range(11, n + 1))]
    return {
        "profile": example.PROFILE,
        "products": [{"product_id": str(i), "product_name": name} for i, name in enumerate(names[:n], 1)],
    }


def print_table(rows: list[Row]) -> None:
    header = ("section", "measurement", "rankstream", "baseline", "ratio")
    table = [header, *((r.section, r.name, r.value, r.baseline, r.ratio) for r in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for n, row in enumerate(table):
        print("| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
