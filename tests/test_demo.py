"""`rankstream demo` runs the example end to end with nothing configured, and leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from conftest import wait_for

FAST = {"RANKSTREAM_SIM_TTFT": "0.2", "RANKSTREAM_SIM_TOKENS_PER_SECOND": "100"}


def demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL")}
    return {**env, **FAST}


def children_of(pid: int) -> set[int]:
    """Every live descendant of pid, read from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_prints_ten_recommendations_one_by_one_then_the_comparison() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rankstream", "demo"],
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ranked = re.findall(r"\+\s*([\d.]+) s\s+(\d+)\. (.+)", result.stdout)
    assert [int(rank) for _, rank, _ in ranked] == list(range(1, 11))
    assert ranked[0][2].startswith("Apple MacBook Air")
    times = [float(t) for t, _, _ in ranked]
    assert times == sorted(times) and times[0] < times[-1], "items did not arrive one by one"
    assert "streamed (this run)" in result.stdout and "unstreamed (this run)" in result.stdout
    assert "4.33 s" in result.stdout and "8.63 s" in result.stdout


def test_ctrl_c_stops_every_process_it_started() -> None:
    env = {**demo_env(), "RANKSTREAM_SIM_TTFT": "30"}  # hold the demo in the middle of the ranking
    demo = subprocess.Popen(
        [sys.executable, "-m", "rankstream", "demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert demo.stdout is not None
    try:
        wait_for(lambda: "enqueued job" in demo.stdout.readline(), 60, "the demo to enqueue")
        started = children_of(demo.pid)
        assert len(started) >= 2, "expected a redis-server and a worker"
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
    wait_for(lambda: not any(alive(pid) for pid in started), 15, "the demo's processes to stop")
