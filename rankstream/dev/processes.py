"""Child processes for the demo, the tests and the bench: start, wait for, stop.

Nothing here sleeps on a guess: every wait polls for the thing it needs, with a deadline.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import redis
from rq import Worker

from ..queue import ranking_queue
from ..settings import Settings

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll until predicate() is truthy and return its value; TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)


def rankstream(args: list[str], env: Mapping[str, str], **popen: Any) -> subprocess.Popen[bytes]:
    """`rankstream ARGS...` as a child process of this Python."""
    return subprocess.Popen([sys.executable, "-m", "rankstream", *args], env=dict(env), **popen)


def wait_for_worker(settings: Settings, process: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """Return once a worker serves the settings' queue; raise if `process` exits first."""
    connection = redis.Redis.from_url(settings.redis_address)
    queue = ranking_queue(connection, settings)

    def registered() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited with status {process.returncode}")
        return Worker.count(queue=queue) > 0

    try:
        wait_for(registered, timeout, "the worker to register")
    finally:
        connection.close()


def stop(process: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL; always reaps the process."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
