"""The ranking job: one request in, a stream of published items and one terminal event out.

`rank` is the RQ job function (rankstream.queue.JOB_FUNCTION). The work happens in
`Ranking.run`, a coroutine on the worker's shared event loop: it asks the LLM with
stream=True, feeds every delta through the extractor, checks each element against the
request's catalogue and publishes it at once. A watchdog task enforces the first-token, idle
and job deadlines and notices cancellation; LLM failures are retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from rq import get_current_job
from rq.job import Job
from rq.timeouts import JobTimeoutException

from rankstream import keys
from rankstream.exceptions import JobFailed
from rankstream.models import REJECT_REASONS, Done, Failed, RankingRequest, Recommendation, Timings, Usage
from rankstream.queue import JOB_FUNCTION

from . import metrics, prompt
from .extract import Item, ItemExtractor, Rejected
from .llm import StreamState, classify, stream_deltas
from .publish import CANCEL_REQUESTED, DUPLICATE, JOB_ENDED, Publisher
from .resp import Sent
from .runtime import Runtime

log = logging.getLogger("rankstream.worker")

CANCEL_POLL_SECONDS = 0.25
ABORT_GRACE_SECONDS = 5.0


def rank(request: dict[str, Any]) -> dict[str, Any]:
    """RQ entry point: run one ranking job to its terminal event."""
    rq_job = get_current_job()
    if rq_job is None:
        raise RuntimeError("rank() runs inside an RQ worker")
    runtime = Runtime.current()
    running: Running | None = runtime.started.pop(rq_job.id, None)
    if running is None:
        try:
            running = Running.start(runtime, rq_job.id, request)
        except ValidationError as exc:  # not made by enqueue(): end its stream all the same
            failed = Failed(code="internal", message=f"invalid request: {exc}", retryable=False, attempt=0)
            publisher = Publisher(runtime.redis, rq_job.id, runtime.settings.stream_ttl)
            runtime.submit(publisher.error(failed)).result()
            raise
    outcome = running.wait()
    if outcome.code not in ("done", "skipped"):
        raise JobFailed(outcome.code, outcome.message, retryable=outcome.retryable)
    return {"outcome": outcome.code, "count": outcome.count}


def begin(rq_job: Job) -> None:
    """Start a dequeued job's coroutine before RQ's bookkeeping for it; `rank` then joins it.

    RQ spends about a millisecond of Redis round trips between dequeueing a job and calling
    its function; the LLM request need not wait for them. Anything odd about the job is left
    for RQ to fail in the usual way.
    """
    if rq_job.func_name != JOB_FUNCTION or len(rq_job.args) != 1 or rq_job.kwargs:
        return
    runtime = Runtime.current()
    try:
        runtime.started[rq_job.id] = Running.start(runtime, rq_job.id, rq_job.args[0])
    except ValidationError:
        return


def abandon(job_id: str) -> None:
    """A job begun at dequeue whose function RQ never called: stop it and let it say so."""
    running: Running | None = Runtime.current().started.pop(job_id, None)
    if running is not None:
        running.abort("internal")


@dataclass(frozen=True, slots=True)
class Running:
    """A job's coroutine, handed to the runtime's loop."""

    ranking: Ranking
    future: Future[Outcome]

    @classmethod
    def start(cls, runtime: Runtime, job_id: str, request: dict[str, Any]) -> Running:
        ranking = Ranking(runtime, job_id, RankingRequest.model_validate(request))
        return cls(ranking, runtime.submit(ranking.run()))

    def wait(self) -> Outcome:
        try:
            return self.future.result()
        except BaseException as exc:
            # RQ's own timeout or a cold shutdown interrupted us: let the job say so before going.
            self.abort("timeout" if isinstance(exc, JobTimeoutException) else "worker_lost")
            raise

    def abort(self, code: str) -> None:
        self.ranking.runtime.loop.call_soon_threadsafe(self.ranking.abort, code)
        with contextlib.suppress(BaseException):  # it ends on its own terms, or we leave anyway
            self.future.result(timeout=ABORT_GRACE_SECONDS)


@dataclass(frozen=True, slots=True)
class Outcome:
    code: str  # "done", "skipped" (another process had ended the job), or an error code
    count: int = 0
    message: str = ""
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class _Pending:
    """An item sent to Redis whose rank has not been read yet."""

    sent: Sent
    closed: float  # perf_counter when its element closed
    source: str
    state: StreamState | None


class _Stop(Exception):
    """The attempt must end now; `code` says why (a timeout, a cancel, the job ended elsewhere)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class Ranking:
    """One job's run. Not shared between jobs; every await yields to the other jobs."""

    def __init__(self, runtime: Runtime, job_id: str, request: RankingRequest) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.job_id = job_id
        self.request = request
        self.catalogue = request.catalogue()
        self.model = request.model or self.settings.model
        self.chat = prompt.chat_request(request, self.model)
        request_key = keys.request(request.request_id) if request.request_id is not None else None
        self.publisher = Publisher(runtime.redis, job_id, self.settings.stream_ttl, request_key)
        self.rejected = dict.fromkeys(REJECT_REASONS, 0)
        self.count = 0  # the rank of the last published item (ranks are given in Redis)
        self.attempt = 0
        self.usage: Usage | None = None
        self.enqueued_at: float | None = None
        self.first_token_at: float | None = None
        self.last_item_at: float | None = None
        self._seen: set[str] = set()
        self._pending: list[_Pending] = []
        self._task: asyncio.Task[Outcome] | None = None
        self._stop_code: str | None = None

    # --- the whole job ---------------------------------------------------------------------

    async def run(self) -> Outcome:
        self._task = asyncio.current_task()
        started = time.monotonic()
        metrics.jobs_in_progress.inc()
        try:
            outcome = await self._run()
        except asyncio.CancelledError:
            code = _STOP_CODES.get(self._stop_code or "worker_lost", self._stop_code or "worker_lost")
            outcome = await self._fail(code, "the worker stopped the job", True)
        except Exception as exc:
            log.exception("job %s failed", self.job_id)
            outcome = await self._fail("internal", f"{type(exc).__name__}: {exc}", False)
        finally:
            metrics.jobs_in_progress.dec()
            metrics.job_duration.observe(time.monotonic() - started)
        if outcome.code != "skipped":
            metrics.jobs.labels(outcome.code).inc()
        return outcome

    def abort(self, code: str) -> None:
        """Stop the job from outside its task (called on the loop's thread)."""
        if self._task is not None and not self._task.done():
            self._stop_code = self._stop_code or code
            self._task.cancel()

    async def _run(self) -> Outcome:
        deadline = time.monotonic() + self.settings.job_timeout
        while True:
            start = await self.publisher.start(self.model)
            if start.attempt == JOB_ENDED:
                return Outcome("skipped")
            if start.attempt == CANCEL_REQUESTED:
                return await self._fail("cancelled", "cancelled before the job started", False)
            self.attempt = start.attempt
            self.count = max(self.count, start.already_published)
            self._note_start(start.enqueued_at)
            try:
                await self._attempt(deadline)
            except _Stop as stop:
                if stop.code == "ended":
                    return Outcome("skipped")
                if stop.code in ("timeout", "cancelled"):
                    return await self._fail(stop.code, _STOP_MESSAGES[stop.code], stop.code == "timeout")
                failure: BaseException = stop  # first-token or idle timeout: worth another try
            except Exception as exc:
                failure = exc
            else:
                if self.count > 0:
                    return await self._done()
                failure = _Stop("no_items")
            retry = await self._retry_or_fail(failure, deadline)
            if retry is not None:
                return retry

    async def _retry_or_fail(self, failure: BaseException, deadline: float) -> Outcome | None:
        """Sleep before the next attempt (None), or the outcome if the job must end here."""
        cause, retryable, delay, code = _classify(failure)
        message = _describe(failure)
        if not retryable:
            return await self._fail(code, message, False)
        if self.attempt >= self.settings.max_attempts:
            return await self._fail(code, f"gave up after {self.attempt} attempts: {message}", True)
        pause = backoff(self.attempt, delay)
        if time.monotonic() + pause >= deadline:
            return await self._fail("timeout", f"no time left to retry after: {message}", True)
        metrics.llm_retries.labels(cause).inc()
        log.warning("job %s attempt %d: %s; retrying in %.2fs", self.job_id, self.attempt, message, pause)
        await asyncio.sleep(pause)
        return None

    def _note_start(self, enqueued_at: float | None) -> None:
        if self.enqueued_at is None:
            self.enqueued_at = enqueued_at
            if enqueued_at is not None:
                metrics.queue_wait.observe(max(0.0, time.time() - enqueued_at))

    # --- one attempt: one LLM stream ---------------------------------------------------------

    async def _attempt(self, deadline: float) -> None:
        extractor = ItemExtractor(Recommendation)
        task = asyncio.current_task()
        assert task is not None
        async with stream_deltas(self.runtime.llm, self.chat) as (state, batches):
            watchdog = asyncio.create_task(self._watch(task, state, deadline))
            try:
                async for texts in batches:
                    for text in texts:
                        for result in extractor.feed(text):
                            self._take(result, state)
                            if self._may_have_enough() and await self._has_enough(state):
                                return  # top_k reached: leaving the block closes the stream
                    await self._settle(state)
            except asyncio.CancelledError:
                if self._stop_code is None:
                    raise
                task.uncancel()
                raise _Stop(self._stop_code) from None
            finally:
                watchdog.cancel()
                self._note_stream_end(state)
                await self._settle(state)  # what was sent counts, whatever ended the stream
        for result in extractor.close():
            self._take(result, state)
        await self._settle(state)
        if self.settings.fallback and self.count > 0:
            await self._fill_from_catalogue()

    async def _watch(self, task: asyncio.Task[Any], state: StreamState, deadline: float) -> None:
        """Cancel the attempt at its first-token, idle or job deadline, or when cancel is asked."""
        opened = time.monotonic()
        next_poll = opened + CANCEL_POLL_SECONDS
        while True:
            if state.first_token_at is None:
                limit, code = opened + self.settings.first_token_timeout, "first_token_timeout"
            else:
                limit, code = state.last_chunk_at + self.settings.idle_timeout, "idle_timeout"
            if deadline <= limit:
                limit, code = deadline, "timeout"
            now = time.monotonic()
            if now >= limit:
                return self._interrupt(task, code)
            if now >= next_poll:
                if await self.publisher.cancel_requested():
                    return self._interrupt(task, "cancelled")
                next_poll = time.monotonic() + CANCEL_POLL_SECONDS
            await asyncio.sleep(min(limit, next_poll) - now)

    def _interrupt(self, task: asyncio.Task[Any], code: str) -> None:
        self._stop_code = code
        task.cancel()

    def _take(self, result: Item[Recommendation] | Rejected, state: StreamState) -> None:
        """Check one element; a good one is sent to Redis at once (its rank comes back later)."""
        if isinstance(result, Rejected):
            self._reject(result.reason)
            return
        product_id = result.value.product_id
        name = self.catalogue.get(product_id)
        if name is None:
            self._reject("unknown_id")
            return
        if product_id in self._seen:
            self._reject("duplicate")
            return
        self._seen.add(product_id)
        self._note_first_token(state)
        self._send(product_id, name, "llm", result.value.model_dump(exclude={"product_id"}), state)

    def _send(
        self, product_id: str, name: str, source: str, extra: dict[str, Any], state: StreamState | None
    ) -> None:
        sent = self.publisher.send_item(product_id, {"product_name": name, "source": source, **extra})
        self._pending.append(_Pending(sent, time.perf_counter(), source, state))

    def _may_have_enough(self) -> bool:
        """top_k counting every item in flight as published (it nearly always is)."""
        return self.request.top_k is not None and self.count + len(self._pending) >= self.request.top_k

    async def _has_enough(self, state: StreamState | None) -> bool:
        await self._settle(state)
        return self.request.top_k is not None and self.count >= self.request.top_k

    async def _settle(self, state: StreamState | None) -> None:
        """Wait for the ranks of the items in flight, in the order they were sent."""
        pending, self._pending = self._pending, []
        for item in pending:
            rank = await self.publisher.rank(item.sent)
            if rank == DUPLICATE:
                if item.source == "llm":  # published by an earlier attempt of this job
                    self._reject("duplicate")
            elif rank == CANCEL_REQUESTED:
                raise _Stop("cancelled")
            elif rank == JOB_ENDED:
                raise _Stop("ended")
            else:
                self._published(rank, item)

    def _published(self, rank: int, item: _Pending) -> None:
        now = time.time()
        metrics.publish_latency.observe(time.perf_counter() - item.closed)
        metrics.items_published.inc()
        if rank == 1:
            if self.enqueued_at is not None:
                metrics.time_to_first_item.observe(now - self.enqueued_at)
            if item.state is not None:
                metrics.llm_time_to_first_item.observe(now - item.state.requested_at)
        if self.last_item_at is not None:
            metrics.item_gap.observe(now - self.last_item_at)
        self.last_item_at = now
        self.count = rank

    async def _fill_from_catalogue(self) -> None:
        """The LLM left some candidates out: append them in catalogue order, marked `fallback`."""
        for product_id, name in self.catalogue.items():
            if self._may_have_enough() and await self._has_enough(None):
                return
            if product_id not in self._seen:
                self._seen.add(product_id)
                self._send(product_id, name, "fallback", {}, None)
        await self._settle(None)

    def _reject(self, reason: str) -> None:
        self.rejected[reason] += 1
        metrics.items_rejected.labels(reason).inc()

    def _note_first_token(self, state: StreamState) -> None:
        if self.first_token_at is None and state.first_token_at is not None:
            self.first_token_at = state.first_token_at
            metrics.llm_time_to_first_token.observe(state.first_token_at - state.requested_at)

    def _note_stream_end(self, state: StreamState) -> None:
        self._note_first_token(state)
        usage = state.usage or Usage(completion_tokens=state.chunks, total_tokens=state.chunks)
        metrics.llm_tokens.labels("prompt").inc(usage.prompt_tokens)
        metrics.llm_tokens.labels("completion").inc(usage.completion_tokens)
        if self.usage is None:
            self.usage = usage
        else:
            self.usage = Usage(
                prompt_tokens=self.usage.prompt_tokens + usage.prompt_tokens,
                completion_tokens=self.usage.completion_tokens + usage.completion_tokens,
                total_tokens=self.usage.total_tokens + usage.total_tokens,
            )

    # --- the terminal event ------------------------------------------------------------------

    async def _done(self) -> Outcome:
        done = Done(count=self.count, rejected=self.rejected, timings=await self._timings(), usage=self.usage)
        if not await self.publisher.done(done):
            return Outcome("skipped")
        return Outcome("done", self.count)

    async def _fail(self, code: str, message: str, retryable: bool) -> Outcome:
        failed = Failed(code=code, message=message, retryable=retryable, attempt=self.attempt)
        try:
            wrote = await asyncio.shield(self.publisher.error(failed))
        except Exception:
            log.exception("job %s: could not publish its error event", self.job_id)
            wrote = False
        return Outcome(code if wrote else "skipped", self.count, message, retryable)

    async def _timings(self) -> Timings:
        if self.enqueued_at is None:
            return Timings()
        base = self.enqueued_at
        started, first_item = await self.publisher.moments()
        return Timings(
            queue_wait=_since(base, started),
            first_token=_since(base, self.first_token_at),
            first_item=_since(base, first_item),
            total=_since(base, time.time()),
        )


# What a watchdog stop means to a subscriber when it ends the job rather than an attempt.
_STOP_CODES = {"first_token_timeout": "timeout", "idle_timeout": "timeout"}

_STOP_MESSAGES = {
    "timeout": "the job ran past RANKSTREAM_JOB_TIMEOUT",
    "cancelled": "cancelled on request",
}


def _since(base: float, moment: float | None) -> float | None:
    return None if moment is None else round(max(0.0, moment - base), 6)


def _classify(failure: BaseException) -> tuple[str, bool, float | None, str]:
    """(retry cause, retryable, Retry-After seconds, error code if the job ends on it)."""
    if isinstance(failure, _Stop):
        if failure.code == "no_items":
            return "no_items", True, None, "no_items"
        return "timeout", True, None, "timeout"  # first-token or idle timeout
    cause, retryable, delay = classify(failure)
    return cause, retryable, delay, "internal" if cause == "internal" else "llm_unavailable"


def _describe(failure: BaseException) -> str:
    if isinstance(failure, _Stop):
        return {
            "first_token_timeout": "no first token within RANKSTREAM_FIRST_TOKEN_TIMEOUT",
            "idle_timeout": "the LLM went silent for longer than RANKSTREAM_IDLE_TIMEOUT",
            "no_items": "the LLM's answer held no valid item",
        }.get(failure.code, failure.code)
    return f"{type(failure).__name__}: {failure}"


def backoff(attempt: int, requested: float | None) -> float:
    """Exponential with full jitter, at least what the server asked for (Retry-After)."""
    computed = random.uniform(0, min(8.0, 0.5 * 2 ** (attempt - 1)))
    return max(computed, requested or 0.0)
