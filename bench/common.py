"""What every benchmark shares: child processes, medians and percentiles, the table."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import httpx

from rankstream.dev.processes import rankstream, stop, wait_for, wait_for_worker
from rankstream.dev.redis_server import RedisServer, free_port
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


@contextmanager
def redis_server() -> Iterator[str]:
    with RedisServer() as server:
        yield server.url


@contextmanager
def child(args: list[str], env: dict[str, str] | None = None, module: str | None = None) -> Iterator[Process]:
    """`rankstream ARGS` (or `python -m MODULE ARGS`) as a child process, stopped on exit.

    Started and stopped by the same helpers as the tests' and the demo's processes
    (rankstream.dev.processes); its stderr goes to a file, quoted if it dies early.
    """
    full_env = {**os.environ, **(env or {})}
    with tempfile.TemporaryFile() as log:
        popen: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": log}
        if module is None:
            process = rankstream(args, full_env, **popen)
        else:
            process = subprocess.Popen([sys.executable, "-m", module, *args], env=full_env, **popen)
        try:
            yield Process(process, log)
        finally:
            stop(process)


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    log: IO[bytes]

    def died(self) -> RuntimeError:
        self.log.seek(0)
        tail = self.log.read().decode(errors="replace")[-2000:]
        return RuntimeError(f"child exited with status {self.popen.returncode}: {tail}")


@contextmanager
def simulator(ttft: float = 0.0, tokens_per_second: float = 1e9) -> Iterator[str]:
    """The LLM simulator in a process of its own (its CPU is not the worker's); yields its base URL."""
    port = free_port()
    args = [
        "llm-sim",
        "--port",
        str(port),
        "--ttft",
        str(ttft),
        "--tokens-per-second",
        str(tokens_per_second),
    ]
    with child(args) as process:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if process.popen.poll() is not None:
                raise process.died()
            try:
                return httpx.get(f"{url}/v1/models", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 20, "the simulator")
        yield f"{url}/v1"


@contextmanager
def worker_on_own_queue(
    redis_url: str, llm_url: str, args: list[str], module: str | None = None, **env: str
) -> Iterator[Settings]:
    """A worker process (`rankstream ARGS`, or `python -m MODULE ARGS`) on a fresh queue,
    registered with RQ; yields the queue's settings."""
    settings = Settings.model_validate({"redis_url": redis_url, "queue": f"bench-{uuid.uuid4().hex[:8]}"})
    env = {"REDIS_URL": redis_url, "OPENAI_BASE_URL": llm_url, "RANKSTREAM_QUEUE": settings.queue, **env}
    with child(args, env, module) as process:
        try:
            wait_for_worker(settings, process.popen)
        except RuntimeError:
            raise process.died() from None
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
