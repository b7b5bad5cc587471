"""A worker runs only the ranking job, and nothing hung on it: anything else on its queue fails unrun.

Anyone who can write to the queue could name any importable function (`os.system`), or hang
RQ callbacks and webhooks on a real ranking job. The worker here has tests/ on its path, so the
hooks of tests/support/hooks.py are importable in it. Had it called one, it would show: a
webhook reaches the receiver; a callback leaves its file, or, in this worker, breaks the job's
end in RQ (RQ arms a callback's timeout with SIGALRM, which the threads that record ends cannot
set: a success is then never recorded, and a failure is recorded with that error instead of
the job's own).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import Simulator, WorkerProcess, finished_stream, wait_for
from rq import Worker
from rq.callbacks import Callback
from rq.job import Job, JobStatus
from rq.webhook import Webhook
from support import hooks
from support.hooks import WebhookReceiver, traces

from producer import enqueue
from rankstream import keys
from rankstream.dev import example
from rankstream.queue import JOB_FUNCTION, SERIALIZER, ranking_queue
from rankstream.settings import Settings

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def worker(module_settings: Settings, sim: Simulator) -> Iterator[WorkerProcess]:
    """The module's worker, with tests/ on its path: it could import support.hooks."""
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    # Were the hooks not importable in the worker, their absence would prove nothing.
    subprocess.run(
        [sys.executable, "-c", "import support.hooks"], env={**os.environ, "PYTHONPATH": path}, check=True
    )
    process = WorkerProcess(module_settings, sim, PYTHONPATH=path)
    yield process
    process.stop()


def enqueue_by_hand(
    connection: redis.Redis, settings: Settings, request: dict[str, Any], *, state: bool = True, **rq: Any
) -> str:
    """A ranking job put on the queue with RQ's own call, as a writer to the queue could.

    With `state`, the job's state hash is written as enqueue() writes it, so the worker takes the
    job up; without, the job is one enqueue() never made.
    """
    job_id = keys.new_job_id()
    if state:
        connection.hset(keys.state(job_id), mapping={"enqueued_at": repr(time.time()), "status": "queued"})
        connection.expire(keys.state(job_id), settings.stream_ttl)
    ranking_queue(connection, settings).enqueue_call(JOB_FUNCTION, args=(request,), job_id=job_id, **rq)
    return job_id


def every_hook(trace_dir: Path, receiver: WebhookReceiver) -> dict[str, Any]:
    """Every hook RQ 3 has: the three callbacks, and a webhook for each end."""
    return {
        "meta": {hooks.TRACE_DIR: str(trace_dir)},
        "on_success": Callback("support.hooks.on_success"),
        "on_failure": Callback("support.hooks.on_failure"),
        "on_stopped": Callback("support.hooks.on_stopped"),
        "webhooks": [
            Webhook(f"{receiver.url}/finished", "finished", method="POST"),
            Webhook(f"{receiver.url}/failed", "failed", method="POST"),
        ],
    }


def _final_status(job_id: str, connection: redis.Redis) -> JobStatus | None:
    status = Job.fetch(job_id, connection=connection, serializer=SERIALIZER).get_status()
    return status if status in (JobStatus.FAILED, JobStatus.FINISHED) else None


def ended_in_rq(job_id: str, connection: redis.Redis, settings: Settings) -> JobStatus:
    """The job's final status, once the worker is through with it: past its hooks, had it called them.

    RQ sends webhooks after it records the status; the worker says idle only once no job of its
    is in flight, which is after the last of that.
    """
    status = wait_for(lambda: _final_status(job_id, connection), 20, "RQ to record the job's end")
    queue = ranking_queue(connection, settings)

    def idle() -> bool:
        return all(connection.hget(w.key, "state") == b"idle" for w in Worker.all(queue=queue))

    wait_for(idle, 20, "the worker to be through with the job")
    assert status is not None
    return status


class TestOnlyTheRankingJobRuns:
    def test_a_job_naming_another_function_does_not_run(
        self, worker: WorkerProcess, module_settings: Settings, connection: redis.Redis, tmp_path: Path
    ) -> None:
        marker = tmp_path / "pwned"
        queue = ranking_queue(connection, module_settings)
        job = queue.enqueue_call("os.system", args=(f"touch {marker}",))

        status = wait_for(lambda: _final_status(job.id, connection), 20, "the job to be handled")

        assert status == JobStatus.FAILED
        assert not marker.exists()
        fetched = Job.fetch(job.id, connection=connection, serializer=SERIALIZER)
        assert "refused" in (fetched.latest_result().exc_string or "")

    def test_the_worker_still_ranks_after_refusing_a_job(
        self, worker: WorkerProcess, module_settings: Settings, connection: redis.Redis
    ) -> None:
        ranking_queue(connection, module_settings).enqueue_call("os.getcwd")
        handle = enqueue(example.example_request(), settings=module_settings)
        assert finished_stream(connection, handle.job_id)[-1]["type"] == "done"


class TestNoCallbackOrWebhookRuns:
    def test_a_ranking_job_carrying_every_hook_ranks_as_usual_and_calls_none(
        self, worker: WorkerProcess, module_settings: Settings, connection: redis.Redis, tmp_path: Path
    ) -> None:
        request = example.example_request().model_dump(mode="json")
        with WebhookReceiver() as receiver:
            job_id = enqueue_by_hand(connection, module_settings, request, **every_hook(tmp_path, receiver))

            stream = finished_stream(connection, job_id)
            status = ended_in_rq(job_id, connection, module_settings)

            assert [e["rank"] for e in stream if e["type"] == "item"] == list(range(1, 11))
            assert stream[-1]["type"] == "done" and status == JobStatus.FINISHED
            assert traces(tmp_path) == [] and receiver.received == []

            # The control: the job as stored does carry live hooks, which plain RQ would call.
            plain = Job.fetch(job_id, connection=connection, serializer=SERIALIZER)
            assert plain.success_callback and plain.failure_callback and plain.stopped_callback
            plain.success_callback(plain, connection, None)
            plain.failure_callback(plain, connection, None, None, None)
            plain.stopped_callback(plain, connection)
            plain.send_webhooks(JobStatus.FINISHED)
            plain.send_webhooks(JobStatus.FAILED, exc_string="")
            assert traces(tmp_path) == [f"{hook}-{job_id}" for hook in ("failure", "stopped", "success")]
            assert receiver.received == [("POST", "/finished"), ("POST", "/failed")]

    def test_a_failing_ranking_job_carrying_every_hook_calls_none(
        self, worker: WorkerProcess, module_settings: Settings, connection: redis.Redis, tmp_path: Path
    ) -> None:
        with WebhookReceiver() as receiver:
            bad = {"profile": "x", "products": []}
            job_id = enqueue_by_hand(connection, module_settings, bad, **every_hook(tmp_path, receiver))

            stream = finished_stream(connection, job_id)
            status = ended_in_rq(job_id, connection, module_settings)

            assert [e["type"] for e in stream] == ["error"] and status == JobStatus.FAILED
            assert traces(tmp_path) == [] and receiver.received == []
            # A failure callback that raises replaces the job's exception in RQ: this one is the job's own.
            failed = Job.fetch(job_id, connection=connection, serializer=SERIALIZER).latest_result()
            assert failed is not None and "ValidationError" in (failed.exc_string or "")


class TestAJobEnqueueDidNotMake:
    def test_a_ranking_job_with_a_bad_request_fails_and_still_ends_its_stream(
        self, worker: WorkerProcess, module_settings: Settings, connection: redis.Redis
    ) -> None:
        # An older producer's job, say: its state is there, its request no longer passes.
        job_id = enqueue_by_hand(connection, module_settings, {"profile": "x", "products": []})

        stream = finished_stream(connection, job_id)

        assert [e["type"] for e in stream] == ["error"]
        assert stream[0]["code"] == "internal" and "products" in stream[0]["message"]
        assert ended_in_rq(job_id, connection, module_settings) == JobStatus.FAILED

    @pytest.mark.parametrize(
        "request_body",
        [example.example_request().model_dump(mode="json"), {"profile": "x", "products": []}],
        ids=["good request", "bad request"],
    )
    def test_a_job_without_state_writes_no_key_of_its_own(
        self,
        request_body: dict[str, Any],
        worker: WorkerProcess,
        module_settings: Settings,
        connection: redis.Redis,
    ) -> None:
        job_id = enqueue_by_hand(connection, module_settings, request_body, state=False)

        status = ended_in_rq(job_id, connection, module_settings)

        assert status in (JobStatus.FINISHED, JobStatus.FAILED)
        assert connection.exists(*keys.job_keys(job_id)) == 0  # no stream of one event, no state
