"""The RQ job: `rank` is the function RQ runs (rankstream.queue.JOB_FUNCTION), bridged to asyncio.

RQ calls `rank` on its own thread; the ranking itself (worker/ranking.py) is a coroutine on the
runtime's event loop. A job's coroutine starts as soon as the worker dequeues it (`begin`,
called from worker/runner.py before RQ's bookkeeping), and `rank` joins it when RQ gets there.
If RQ never does, `abandon` stops it. If RQ's own timeout or a shutdown interrupts the wait,
the ranking is told, so the job's stream still gets its terminal event.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from rq import get_current_job
from rq.job import Job
from rq.timeouts import JobTimeoutException

from rankstream.codes import ErrorCode
from rankstream.exceptions import JobFailed
from rankstream.models import Failed, RankingRequest
from rankstream.queue import JOB_FUNCTION

from .publish import Publisher
from .ranking import Ending, Ranking, Result
from .runtime import Runtime


def rank(request: dict[str, Any]) -> dict[str, Any]:
    """RQ entry point: run one ranking job to its terminal event."""
    rq_job = get_current_job()
    if rq_job is None:
        raise RuntimeError("rank() runs inside an RQ worker")
    runtime = Runtime.current()
    running = runtime.started.pop(rq_job.id, None)
    if running is None:
        try:
            running = Running.start(runtime, rq_job.id, request)
        except ValidationError as exc:  # not made by enqueue(): end its stream all the same
            _refuse(runtime, rq_job.id, exc)
            raise
    result = running.wait()
    if result.ending is Ending.ERROR and result.error is not None:
        raise JobFailed(result.error.code, result.error.message, retryable=result.error.retryable)
    if result.ending is Ending.LOST:  # RQ must not call it a success: the stream has no end
        raise JobFailed(ErrorCode.INTERNAL, "Redis never took the job's terminal event", retryable=True)
    return {"outcome": str(result.ending), "count": result.count}


def begin(rq_job: Job) -> None:
    """Start a dequeued job's coroutine before RQ's bookkeeping for it; `rank` then joins it.

    RQ spends about a millisecond of Redis round trips between dequeueing a job and calling
    its function; the LLM request need not wait for them. Anything odd about the job is left
    for RQ to fail in the usual way.
    """
    if rq_job.func_name != JOB_FUNCTION or len(rq_job.args) != 1 or rq_job.kwargs:
        return
    runtime = Runtime.current()
    with contextlib.suppress(ValidationError):
        runtime.started[rq_job.id] = Running.start(runtime, rq_job.id, rq_job.args[0])


def abandon(job_id: str) -> None:
    """A job begun at dequeue whose function RQ never called: stop it and let it say so."""
    running = Runtime.current().started.pop(job_id, None)
    if running is not None:
        running.abort(ErrorCode.INTERNAL)


@dataclass(frozen=True, slots=True)
class Running:
    """A job's coroutine, handed to the runtime's loop."""

    ranking: Ranking
    future: Future[Result]

    @classmethod
    def start(cls, runtime: Runtime, job_id: str, request: dict[str, Any]) -> Running:
        ranking = Ranking(runtime, job_id, RankingRequest.model_validate(request))
        return cls(ranking, runtime.submit(ranking.run()))

    def wait(self) -> Result:
        try:
            return self.future.result()
        except BaseException as exc:
            # RQ's own timeout or a cold shutdown interrupted us: let the job say so before going.
            self.abort(ErrorCode.TIMEOUT if isinstance(exc, JobTimeoutException) else ErrorCode.WORKER_LOST)
            raise

    def abort(self, code: ErrorCode) -> None:
        """Stop the ranking and wait for its terminal event, up to the lease: then we leave anyway."""
        self.ranking.runtime.loop.call_soon_threadsafe(self.ranking.abort, code)
        with contextlib.suppress(BaseException):
            self.future.result(timeout=self.ranking.settings.lease_seconds)


def _refuse(runtime: Runtime, job_id: str, exc: ValidationError) -> None:
    failed = Failed(code=ErrorCode.INTERNAL, message=f"invalid request: {exc}", retryable=False, attempt=0)
    publisher = Publisher(runtime.scripts, job_id, runtime.settings.stream_ttl)
    runtime.submit(publisher.error(failed)).result()
