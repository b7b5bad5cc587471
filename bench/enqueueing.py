"""Section 5: what `producer.enqueue()` costs its caller, and how soon the LLM hears of the job.

(a) enqueue() latency: `enqueue(request)` exactly as an upstream service calls it (settings
from the environment, the process's shared Redis pool), the example's ten-product request, a
private Redis and no worker, so the queue only grows (it is emptied after each run). Against
bare RQ in the same run: `Queue.enqueue(noop, payload)` of a trivial function with the same
JSON payload, on a reused connection and Queue with RQ's JSON serializer. With a `request_id`
(a fresh one per call) enqueue WATCHes the id's claim key, reads it and writes the claim with
the job: reported apart. The three are called in turn, call by call, so drift hits all alike;
p50 and p99 of each run's calls, then the median over runs.

(b) enqueue -> LLM request: a real `rankstream worker` process and the LLM simulator
(`rankstream llm-sim`, which notes each request's arrival as `received_at`, time.time(), in
`GET /sim/requests`). Jobs go one at a time; after each one has ended and RQ has closed it,
the worker sits idle for IDLE seconds before the next enqueue. Measured: the simulator's
`received_at` minus time.time() just before `enqueue()`, and minus time.time() just after it
returned (the part that is the worker's: RQ's dequeue, the job's START step, the HTTP request).
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from producer import enqueue, events
from rankstream import keys
from rankstream.connections import connect
from rankstream.models import RankingRequest
from rankstream.queue import SERIALIZER
from rankstream.settings import Settings, get_settings

from .common import Row, catalogue_request, percentile, simulator, wait_for, worker_on_own_queue

IDLE = 0.05  # seconds the worker sits idle before each enqueue in (b)
WARM = 3  # first jobs of (b) not counted: connections, imports


def noop(payload: dict[str, Any]) -> None:
    """The baseline's job function (never run: no worker serves its queue)."""


@contextmanager
def environment(redis_url: str, queue: str) -> Iterator[Settings]:
    """REDIS_URL and RANKSTREAM_QUEUE in this process's environment, as an upstream service has
    them, so `enqueue(request)` runs its default path (get_settings(), the shared pool)."""
    saved = {name: os.environ.get(name) for name in ("REDIS_URL", "RANKSTREAM_QUEUE")}
    os.environ.update({"REDIS_URL": redis_url, "RANKSTREAM_QUEUE": queue})
    get_settings.cache_clear()
    try:
        yield get_settings()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()


def enqueue_latencies(redis_url: str, calls: int) -> dict[str, list[float]]:
    """One run of (a): seconds per call for each of the three, called in turn."""
    request = catalogue_request(10)
    payload = RankingRequest.model_validate(request).model_dump(mode="json")
    times: dict[str, list[float]] = {"enqueue": [], "enqueue+request_id": [], "rq": []}
    rq_connection = redis.Redis.from_url(redis_url)
    baseline = Queue(f"bench-rq-{uuid.uuid4().hex[:8]}", connection=rq_connection, serializer=JSONSerializer)
    run = uuid.uuid4().hex[:8]
    with environment(redis_url, f"bench-{run}") as settings:
        connection = connect(settings)
        enqueue(request)  # warm: the pool's connection, the RQ objects
        baseline.enqueue(noop, payload)
        job_ids: list[str] = []
        for n in range(calls):
            with_id = {**request, "request_id": f"bench-{run}-{n}"}
            start = time.perf_counter()
            handle = enqueue(request)
            middle = time.perf_counter()
            handle_with_id = enqueue(with_id)
            end = time.perf_counter()
            baseline.enqueue(noop, payload)
            done = time.perf_counter()
            times["enqueue"].append(middle - start)
            times["enqueue+request_id"].append(end - middle)
            times["rq"].append(done - end)
            job_ids += [handle.job_id, handle_with_id.job_id]
        _clean(connection, settings, job_ids, [f"bench-{run}-{n}" for n in range(calls)])
        baseline.empty()
        rq_connection.delete(baseline.key)
    rq_connection.close()
    return times


def idle_latencies(redis_url: str, calls: int) -> dict[str, list[float]]:
    """(a) for a caller that has been idle: IDLE seconds before each call, enqueue() and RQ in turn."""
    request = catalogue_request(10)
    payload = RankingRequest.model_validate(request).model_dump(mode="json")
    times: dict[str, list[float]] = {"enqueue": [], "rq": []}
    rq_connection = redis.Redis.from_url(redis_url)
    baseline = Queue(f"bench-rq-{uuid.uuid4().hex[:8]}", connection=rq_connection, serializer=JSONSerializer)
    with environment(redis_url, f"bench-{uuid.uuid4().hex[:8]}") as settings:
        enqueue(request)
        baseline.enqueue(noop, payload)
        job_ids = []
        for _ in range(calls):
            time.sleep(IDLE)
            start = time.perf_counter()
            job_ids.append(enqueue(request).job_id)
            times["enqueue"].append(time.perf_counter() - start)
            time.sleep(IDLE)
            start = time.perf_counter()
            baseline.enqueue(noop, payload)
            times["rq"].append(time.perf_counter() - start)
        _clean(connect(settings), settings, job_ids, [])
        baseline.empty()
        rq_connection.delete(baseline.key)
    rq_connection.close()
    return times


def _clean(connection: redis.Redis, settings: Settings, job_ids: list[str], request_ids: list[str]) -> None:
    """Drop what the run enqueued: the queue and its jobs, the jobs' state, the request_id claims."""
    queue = Queue(settings.queue, connection=connection, serializer=SERIALIZER)
    queue.empty()
    connection.delete(queue.key)
    for start in range(0, len(job_ids), 500):
        connection.delete(*(keys.state(job_id) for job_id in job_ids[start : start + 500]))
    for start in range(0, len(request_ids), 500):
        connection.delete(*(keys.request(rid) for rid in request_ids[start : start + 500]))


def llm_arrivals(redis_url: str, llm_url: str, jobs: int) -> dict[str, list[float]]:
    """(b), seconds per job: from just before enqueue() to the LLM request's arrival ("llm"), from
    enqueue() returning to it ("returned"), the enqueue() call itself ("call"), and from just
    before enqueue() to the worker's START step (its `started_at`, noted just before the call)."""
    admin = httpx.Client(base_url=llm_url.removesuffix("/v1"), timeout=5)
    connection = redis.Redis.from_url(redis_url)
    request = catalogue_request(10)
    times: dict[str, list[float]] = {"llm": [], "returned": [], "call": [], "started": []}
    args = ["worker", "--metrics-port", "0"]
    with (
        worker_on_own_queue(redis_url, llm_url, args, RANKSTREAM_FALLBACK="false") as worker_settings,
        environment(redis_url, worker_settings.queue),
    ):
        admin.delete("/sim/requests").raise_for_status()
        for n in range(jobs + WARM):
            time.sleep(IDLE)
            t0 = time.time()
            handle = enqueue(request)
            t1 = time.time()
            for _ in events(handle, timeout=30):
                pass
            wait_for(lambda job_id=handle.job_id: _ended(connection, job_id), 30, "RQ to close the job")
            log = admin.get("/sim/requests").json()
            assert len(log) == n + 1, f"expected one LLM request per job, got {len(log)} after {n + 1} jobs"
            if n >= WARM:
                received = float(log[-1]["received_at"])
                started = float(connection.hget(keys.state(handle.job_id), "started_at") or 0)
                times["llm"].append(received - t0)
                times["returned"].append(received - t1)
                times["call"].append(t1 - t0)
                times["started"].append(started - t0)
    admin.close()
    connection.close()
    return times


def _ended(connection: redis.Redis, job_id: str) -> bool:
    status = Job.fetch(job_id, connection=connection, serializer=SERIALIZER).get_status()
    return status in (JobStatus.FINISHED, JobStatus.FAILED)


def measure(redis_url: str, runs: int, calls: int, jobs: int) -> list[Row]:
    per_run = [enqueue_latencies(redis_url, calls) for _ in range(runs)]

    def stat(name: str, q: float) -> float:
        return statistics.median(percentile(run[name], q) for run in per_run) * 1e6

    rows = []
    for q in (50, 99):
        rq = stat("rq", q)
        for name, label in (("enqueue", "enqueue()"), ("enqueue+request_id", "enqueue(), with request_id")):
            ours = stat(name, q)
            rows.append(
                Row(
                    "5 enqueue",
                    f"{label} p{q} (us)",
                    f"{ours:.0f}",
                    f"{rq:.0f} (bare RQ Queue.enqueue)",
                    f"{ours / rq:.2f}x",
                )
            )
    idle = idle_latencies(redis_url, calls=max(20, jobs))
    ours, rq = percentile(idle["enqueue"], 50) * 1e6, percentile(idle["rq"], 50) * 1e6
    rows.append(
        Row(
            "5 enqueue",
            f"enqueue() after {IDLE * 1e3:.0f} ms idle p50 (us)",
            f"{ours:.0f}",
            f"{rq:.0f} (bare RQ Queue.enqueue)",
            f"{ours / rq:.2f}x",
        )
    )
    with simulator() as llm_url:
        arrivals = llm_arrivals(redis_url, llm_url, jobs)

    def ms(name: str, q: float) -> str:
        return f"{percentile(arrivals[name], q) * 1e3:.2f}"

    rows += [
        Row("5 enqueue", "enqueue -> LLM request p50 (ms)", ms("llm", 50), "", "target <= 2 ms"),
        Row("5 enqueue", "enqueue -> LLM request p99 (ms)", ms("llm", 99)),
        Row("5 enqueue", "  of which enqueue() at idle p50 (ms)", ms("call", 50)),
        Row("5 enqueue", "  enqueue -> worker's START p50 (ms)", ms("started", 50)),
        Row("5 enqueue", "enqueue() returned -> LLM request p50 (ms)", ms("returned", 50)),
        Row("5 enqueue", "enqueue() returned -> LLM request p99 (ms)", ms("returned", 99)),
    ]
    return rows
