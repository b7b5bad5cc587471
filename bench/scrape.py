"""Section 9: a worker's /metrics scrape stays cheap and flat, however many jobs it has run.

One `rankstream worker --concurrency 200` on an unpaced simulator. Its /metrics is scraped 30
times (the median time and the body's size) after a few warm-up jobs, and again after JOBS
more, each time once the worker has gone quiet (RQ's bookkeeping of the last jobs would
otherwise hold the GIL): with bounded label sets (no job ids) the second costs what the first did.
`python -m bench --only 9`, or `python -m bench.scrape`.
"""

from __future__ import annotations

import statistics
import time

import httpx
import psutil
import redis
from rq import Worker

from producer import enqueue
from rankstream.dev.example import example_request
from rankstream.dev.processes import wait_for
from rankstream.dev.redis_server import free_port
from rankstream.queue import ranking_queue
from rankstream.settings import Settings

from .common import Row, simulator, worker_on_own_queue

JOBS = 10_000
SCRAPES = 30


def scrape(url: str) -> tuple[float, int]:
    """Median seconds of one scrape, and the body's bytes."""
    times, size = [], 0
    with httpx.Client(timeout=10) as client:
        for _ in range(SCRAPES):
            started = time.perf_counter()
            size = len(client.get(url).content)
            times.append(time.perf_counter() - started)
    return statistics.median(times), size


def quiet(redis_url: str, settings: Settings, timeout: float = 60) -> None:
    """Until the worker process spends under 2 % of a core for half a second: RQ's bookkeeping of
    the last jobs done, so the scrape is timed alone."""
    connection = redis.Redis.from_url(redis_url)
    pid = Worker.all(queue=ranking_queue(connection, settings))[0].pid
    connection.close()
    process = psutil.Process(pid)

    def idle() -> bool:
        before = sum(process.cpu_times()[:2])
        time.sleep(0.5)
        return sum(process.cpu_times()[:2]) - before < 0.01

    wait_for(idle, timeout, "the worker to go quiet")


def run_jobs(redis_url: str, settings: Settings, count: int) -> None:
    connection = redis.Redis.from_url(redis_url)
    queue = ranking_queue(connection, settings)
    done_before = queue.finished_job_registry.count
    for _ in range(count):
        enqueue(example_request(), settings=settings)
    wait_for(lambda: queue.finished_job_registry.count - done_before >= count, 600, f"{count} jobs")
    connection.close()


def measure(redis_url: str, quick: bool = False) -> list[Row]:
    jobs = 2_000 if quick else JOBS
    port = free_port()
    args = ["worker", "--concurrency", "200", "--metrics-port", str(port)]
    with (
        simulator() as llm_url,
        worker_on_own_queue(redis_url, llm_url, args, RANKSTREAM_LOG_LEVEL="WARNING") as settings,
    ):
        url = f"http://127.0.0.1:{port}/metrics"
        run_jobs(redis_url, settings, 20)
        quiet(redis_url, settings)
        early, early_size = scrape(url)
        started = time.monotonic()
        run_jobs(redis_url, settings, jobs)
        took = time.monotonic() - started
        quiet(redis_url, settings)
        late, late_size = scrape(url)
    print(f"# 9 scrape: {jobs} jobs in {took:.0f} s between the two scrapes")
    return [
        Row("9 scrape", "worker /metrics scrape after 20 jobs (ms)", f"{early * 1e3:.2f}"),
        Row(
            "",
            f"worker /metrics scrape after {jobs + 20} jobs (ms)",
            f"{late * 1e3:.2f}",
            f"{early * 1e3:.2f} (after 20)",
            f"{late / early:.2f}x",
        ),
        Row(
            "",
            f"worker /metrics body after {jobs + 20} jobs (bytes)",
            f"{late_size}",
            f"{early_size} (after 20)",
            f"{late_size / early_size:.2f}x",
        ),
    ]


def main() -> None:
    import argparse

    from .common import print_table, redis_server

    parser = argparse.ArgumentParser(prog="python -m bench.scrape", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 jobs instead of 10,000")
    args = parser.parse_args()
    with redis_server() as redis_url:
        print_table(measure(redis_url, args.quick))


if __name__ == "__main__":
    main()
