"""A worker runs only the ranking job: anything else found on its queue fails without running."""

from __future__ import annotations

from pathlib import Path

import redis
from conftest import WorkerProcess, finished_stream, wait_for
from rq.job import Job, JobStatus

from producer import enqueue
from rankstream import keys
from rankstream.dev import example
from rankstream.queue import JOB_FUNCTION, SERIALIZER, ranking_queue
from rankstream.settings import Settings


def test_a_job_naming_another_function_does_not_run(
    worker: WorkerProcess, module_settings: Settings, connection: redis.Redis, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    queue = ranking_queue(connection, module_settings)
    job = queue.enqueue_call("os.system", args=(f"touch {marker}",))

    status = wait_for(lambda: _final_status(job.id, connection), 20, "the job to be handled")

    assert status == JobStatus.FAILED
    assert not marker.exists()
    fetched = Job.fetch(job.id, connection=connection, serializer=SERIALIZER)
    assert "refused" in (fetched.latest_result().exc_string or "")


def _final_status(job_id: str, connection: redis.Redis) -> JobStatus | None:
    status = Job.fetch(job_id, connection=connection, serializer=SERIALIZER).get_status()
    return status if status in (JobStatus.FAILED, JobStatus.FINISHED) else None


def test_a_ranking_job_with_a_bad_request_fails_and_still_ends_its_stream(
    worker: WorkerProcess, module_settings: Settings, connection: redis.Redis
) -> None:
    queue = ranking_queue(connection, module_settings)
    job_id = keys.new_job_id()
    queue.enqueue_call(JOB_FUNCTION, args=({"profile": "x", "products": []},), job_id=job_id)

    stream = finished_stream(connection, job_id)

    assert [e["type"] for e in stream] == ["error"]
    assert stream[0]["code"] == "internal" and "products" in stream[0]["message"]
    assert wait_for(lambda: _final_status(job_id, connection), 20, "RQ to fail the job") == JobStatus.FAILED


def test_the_worker_still_ranks_after_refusing_a_job(
    worker: WorkerProcess, module_settings: Settings, connection: redis.Redis
) -> None:
    ranking_queue(connection, module_settings).enqueue_call("os.getcwd")
    handle = enqueue(example.example_request(), settings=module_settings)
    assert finished_stream(connection, handle.job_id)[-1]["type"] == "done"
