"""A worker runs only the ranking job: anything else found on its queue fails without running."""

from __future__ import annotations

from pathlib import Path

import redis
from conftest import WorkerProcess, wait_for
from rq.job import Job, JobStatus

from rankstream.queue import SERIALIZER, ranking_queue
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
