"""The RQ job: `rank` is the function RQ names (rankstream.queue.JOB_FUNCTION), bridged to asyncio.

The ranking itself (worker/ranking.py) is a coroutine on the runtime's event loop. `Running` is
a started ranking seen from RQ's threads: `rankstream worker` (worker/rq_worker.py) starts many
and records each end when its future completes; `rank`, for a plain `rq worker`, starts one and
waits. A stop from outside (a shutdown, RQ's stop-job command) reaches the ranking, so the job's
stream still gets its terminal event.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from rq import get_current_job
from rq.job import Job

from rankstream.codes import ErrorCode
from rankstream.exceptions import JobFailed
from rankstream.models import Failed, RankingRequest

from .publish import Publisher
from .ranking import Ending, Ranking, Result
from .runtime import Runtime


def rank(request: dict[str, Any]) -> dict[str, Any]:
    """RQ entry point, for a plain `rq worker`: run one ranking job to its terminal event."""
    rq_job = get_current_job()
    if rq_job is None:
        raise RuntimeError("rank() runs inside an RQ worker")
    runtime = Runtime.current()
    try:
        running = Running.start(runtime, rq_job.id, request)
    except ValidationError as exc:
        refuse(runtime, rq_job.id, exc)
        raise
    try:
        return outcome(running.future.result())
    except BaseException:
        running.abort(ErrorCode.WORKER_LOST)  # a shutdown interrupted the wait: the job says so
        raise


def request_of(job: Job) -> Any:
    """The job's one argument, the request; anything else is not a job enqueue() made."""
    if len(job.args) != 1 or job.kwargs:
        raise ValueError("a ranking job takes exactly one argument, the request")
    return job.args[0]


def outcome(result: Result) -> dict[str, Any]:
    """What RQ records for a finished ranking: a result, or JobFailed with the job's code."""
    if result.ending is Ending.ERROR and result.error is not None:
        raise JobFailed(result.error.code, result.error.message, retryable=result.error.retryable)
    if result.ending is Ending.LOST:  # RQ must not call it a success: the stream has no end
        raise JobFailed(ErrorCode.INTERNAL, "Redis never took the job's terminal event", retryable=True)
    return {"outcome": str(result.ending), "count": result.count}


def refuse(runtime: Runtime, job_id: str, exc: BaseException) -> None:
    """A job whose request is invalid (it was not made by enqueue()): end its stream all the same."""
    failed = Failed(code=ErrorCode.INTERNAL, message=f"invalid request: {exc}", retryable=False, attempt=0)
    publisher = Publisher(runtime.scripts, job_id, runtime.settings.stream_ttl)
    with contextlib.suppress(Exception):
        runtime.submit(publisher.error(failed)).result(timeout=runtime.settings.lease_seconds)


@dataclass(frozen=True, slots=True)
class Running:
    """A ranking started on the runtime's loop; `future` completes with its Result."""

    ranking: Ranking
    future: Future[Result]

    @classmethod
    def start(cls, runtime: Runtime, job_id: str, request: Any) -> Running:
        """Raises ValidationError for a request that is not one."""
        ranking = Ranking(runtime, job_id, RankingRequest.model_validate(request))
        return cls(ranking, runtime.submit(ranking.run()))

    def stop(self, code: ErrorCode) -> None:
        """End the ranking with `code`; returns at once (the future says when it has)."""
        self.ranking.runtime.loop.call_soon_threadsafe(self.ranking.abort, code)

    def abort(self, code: ErrorCode) -> None:
        """Stop the ranking and wait for its terminal event, up to the lease: then we leave anyway."""
        self.stop(code)
        with contextlib.suppress(BaseException):
            self.future.result(timeout=self.ranking.settings.lease_seconds)
