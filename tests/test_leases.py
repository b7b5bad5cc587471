"""Never lose a shopper: a killed worker's jobs are resumed on a live worker, or ended, within the lease.

A worker holding 8 jobs is SIGKILLed mid-stream while a second worker serves the same queue:
every stream still ends, within RANKSTREAM_LEASE_SECONDS of the kill — resumed after the items
already published (ranks contiguous, no product twice), or `error` `worker_lost` when the job
has no attempt left.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
import redis
from conftest import (
    Simulator,
    WorkerProcess,
    assert_complete_ranking,
    finished_stream,
    make_settings,
    streaming,
    wait_for,
)
from rq import Queue
from rq.job import Job, JobStatus

from producer import enqueue
from rankstream import keys
from rankstream.dev import example
from rankstream.queue import SERIALIZER, ranking_queue
from rankstream.settings import Settings

LEASE = 3.0
JOBS = 8


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[Simulator]:
    simulator = Simulator(ttft=0.05, tokens_per_second=20)  # about three seconds a job
    yield simulator
    simulator.stop()


def kill_mid_stream(
    settings: Settings, sim: Simulator, connection: redis.Redis, **env: str
) -> tuple[list[str], float, WorkerProcess]:
    """Eight jobs running on a first worker, which is then SIGKILLed with a second one standing by."""
    env = {"RANKSTREAM_LEASE_SECONDS": str(LEASE), "RANKSTREAM_CONCURRENCY": str(JOBS), **env}
    doomed = WorkerProcess(settings, sim, **env)
    job_ids = [enqueue(example.example_request(), settings=settings).job_id for _ in range(JOBS)]
    wait_for(lambda: streaming(connection, job_ids), 15, "eight jobs to stream on the first worker")
    survivor = WorkerProcess(settings, sim, **env)
    doomed.process.send_signal(signal.SIGKILL)
    killed_at = time.time()
    doomed.process.wait(timeout=10)
    doomed.stop()
    return job_ids, killed_at, survivor


class TestAKilledWorker:
    def test_its_eight_jobs_are_resumed_on_a_live_worker_within_the_lease(
        self, redis_url: str, slow_sim: Simulator, connection: redis.Redis
    ) -> None:
        settings = make_settings(redis_url)
        job_ids, killed_at, survivor = kill_mid_stream(settings, slow_sim, connection)
        try:
            streams = [finished_stream(connection, job_id) for job_id in job_ids]
        finally:
            survivor.stop()

        for stream in streams:
            assert_complete_ranking(stream)  # ranks 1..10 contiguous, each product once, then done
            resumed = [e for e in stream if e["type"] == "started"][-1]
            assert resumed["attempt"] == 2
            assert int(resumed["id"].split("-")[0]) / 1000 - killed_at < LEASE
            assert stream[-1]["rejected"]["duplicate"] == 0
        for job_id in job_ids:
            job = Job.fetch(job_id, connection=connection, serializer=SERIALIZER)
            assert job.get_status() == JobStatus.FINISHED

    def test_with_no_attempt_left_each_job_ends_worker_lost_within_the_lease(
        self, redis_url: str, slow_sim: Simulator, connection: redis.Redis
    ) -> None:
        settings = make_settings(redis_url)
        job_ids, killed_at, survivor = kill_mid_stream(
            settings, slow_sim, connection, RANKSTREAM_MAX_ATTEMPTS="1"
        )
        try:
            streams = [finished_stream(connection, job_id) for job_id in job_ids]
            statuses = [
                wait_for(
                    lambda job_id=job_id: (
                        Job.fetch(job_id, connection=connection, serializer=SERIALIZER).get_status()
                        == JobStatus.FAILED
                    ),
                    10,
                    "RQ to record the failure",
                )
                for job_id in job_ids
            ]
        finally:
            survivor.stop()

        for stream in streams:
            error = stream[-1]
            assert error["type"] == "error" and error["code"] == "worker_lost" and error["retryable"] is True
            assert int(error["id"].split("-")[0]) / 1000 - killed_at < LEASE
            assert 0 < len([e for e in stream if e["type"] == "item"]) < 10
        assert all(statuses)


class TestAJobItsWorkerDiedTaking:
    def test_is_put_back_on_the_queue_and_ranked_within_the_lease(
        self, redis_url: str, slow_sim: Simulator, connection: redis.Redis
    ) -> None:
        settings = make_settings(redis_url)
        queue = ranking_queue(connection, settings)
        handle = enqueue(example.example_request(), settings=settings)
        # As a worker leaves it when killed between dequeueing the job and taking its lease.
        assert connection.lmove(queue.key, queue.intermediate_queue_key, "LEFT", "RIGHT")
        worker = WorkerProcess(settings, slow_sim, RANKSTREAM_LEASE_SECONDS=str(LEASE))
        up = time.time()
        try:
            stream = finished_stream(connection, handle.job_id)
        finally:
            worker.stop()

        assert_complete_ranking(stream)
        started = int(stream[0]["id"].split("-")[0]) / 1000
        assert started - up < LEASE  # not RQ's own cleanup of its intermediate list, a minute later
        assert not connection.lrange(queue.intermediate_queue_key, 0, -1)


class TestAResumedJob:
    def test_keeps_the_deadline_of_its_first_start(
        self, redis_url: str, slow_sim: Simulator, connection: redis.Redis
    ) -> None:
        settings = make_settings(redis_url)
        worker = WorkerProcess(settings, slow_sim, RANKSTREAM_JOB_TIMEOUT="4")
        try:
            # As a lost worker leaves it: first started 3.5 s ago, requeued by a reaper.
            parked = settings.model_copy(update={"queue": f"{settings.queue}-parked"})
            handle = enqueue(example.example_request(), settings=parked)
            connection.hset(
                keys.state(handle.job_id), mapping={"started_at": repr(time.time() - 3.5), "attempt": 1}
            )
            Queue(parked.queue, connection=connection, serializer=SERIALIZER).remove(handle.job_id)
            job = Job.fetch(handle.job_id, connection=connection, serializer=SERIALIZER)
            ranking_queue(connection, settings).enqueue_job(job)
            stream = finished_stream(connection, handle.job_id)
        finally:
            worker.stop()

        # A fresh start would have had 4 s, enough for the whole ranking (about 3 s).
        assert stream[-1]["type"] == "error" and stream[-1]["code"] == "timeout"
        assert len([e for e in stream if e["type"] == "item"]) < 10
