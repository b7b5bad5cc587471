"""Enqueue -> job running, for RQ's SimpleWorker (what `rankstream worker` is) and the forking Worker.

"Running" is the moment the job's coroutine starts (`started_at`, written by the job's first
Redis step); jobs are enqueued one at a time, each after the previous one ended, so the
figure is pickup latency, not queueing.
"""

from __future__ import annotations

import redis
from rq.job import Job, JobStatus

from producer import enqueue, events
from rankstream import keys
from rankstream.queue import SERIALIZER

from .common import Row, catalogue_request, percentile, wait_for, worker_on_own_queue

WORKERS: dict[str, tuple[str | None, list[str]]] = {  # (module, args); no module: `rankstream ARGS`
    "SimpleWorker (rankstream worker)": (None, ["worker", "--metrics-port", "0"]),
    "Worker (fork per job)": ("bench.fork_worker", []),
}


def measure(redis_url: str, llm_url: str, jobs: int) -> list[Row]:
    results = {
        name: _pickups(redis_url, llm_url, module, args, jobs) for name, (module, args) in WORKERS.items()
    }
    simple, fork = results.values()
    rows = []
    for q in (50, 99):
        ours, theirs = percentile(simple, q), percentile(fork, q)
        rows.append(
            Row(
                "4 pickup",
                f"enqueue -> running p{q} (ms)",
                f"{ours * 1e3:.2f}",
                f"{theirs * 1e3:.2f} (fork)",
                f"{theirs / ours:.1f}x",
            )
        )
    return rows


def _pickups(redis_url: str, llm_url: str, module: str | None, args: list[str], jobs: int) -> list[float]:
    connection = redis.Redis.from_url(redis_url)
    request = catalogue_request(10)
    with worker_on_own_queue(redis_url, llm_url, args, module) as settings:
        samples = []
        for n in range(jobs + 3):
            handle = enqueue(request, settings=settings, connection=connection)
            for _ in events(handle, settings=settings, connection=connection, timeout=30):
                pass
            wait_for(lambda job_id=handle.job_id: _ended(connection, job_id), 30, "RQ to close the job")
            enqueued, started = connection.hmget(keys.state(handle.job_id), ["enqueued_at", "started_at"])
            if n >= 3:  # the first jobs warm up connections and imports
                samples.append(float(started or 0) - float(enqueued or 0))
    return samples


def _ended(connection: redis.Redis, job_id: str) -> bool:
    status = Job.fetch(job_id, connection=connection, serializer=SERIALIZER).get_status()
    return status in (JobStatus.FINISHED, JobStatus.FAILED)
