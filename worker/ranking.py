"""The ranking: one request in, attempts at the LLM, published items, exactly one terminal event.

`Ranking.run` is a coroutine on the worker's event loop, one per job. Each attempt asks the LLM
with stream=True, feeds every delta through the extractor, checks each element against the
request's catalogue and publishes it at once. The watchdog (worker/watchdog.py) bounds each
attempt; the retry policy (worker/retry.py) decides whether a failed attempt gets another.
Nothing here knows about RQ: worker/job.py adapts it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import openai
import redis.exceptions

from rankstream import keys
from rankstream.codes import ErrorCode, RejectReason, ResponseFormat, RetryCause, Source
from rankstream.models import Done, Failed, RankingRequest, Recommendation

from . import metrics, prompt, retry
from .extract import Item, ItemExtractor, Rejected
from .formats import refused
from .llm import StreamState, stream_deltas
from .publish import Attempt, Published, Publisher, Refused
from .report import Report
from .watchdog import Stopped, StopReason, Watchdog

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("rankstream.worker")

TERMINAL_RETRY_FIRST = 0.1  # seconds before writing a terminal event again, doubling
TERMINAL_RETRY_MAX = 2.0


class Ending(StrEnum):
    DONE = "done"
    ERROR = "error"
    SKIPPED = "skipped"  # another writer had ended the job, or its state is gone: nothing written
    LOST = "lost"  # Redis never took the terminal event: the stream is left open (logged)


@dataclass(frozen=True, slots=True)
class Result:
    ending: Ending
    count: int = 0
    error: Failed | None = None


@dataclass(frozen=True, slots=True)
class _Pending:
    """A checked item waiting for the end of the chunk that closed it, to be published."""

    product_id: str
    fields: dict[str, Any]
    closed: float  # perf_counter when its element closed
    state: StreamState | None  # the LLM call it came from; None for a fallback item


@dataclass
class _Checks:
    """Which elements may be published: ids of the catalogue, each once per job.

    A product is marked published only once Redis says it is on the stream, so an item whose
    publish failed with its attempt is still there for the next one.
    """

    catalogue: dict[str, str]
    published: set[str] = field(default_factory=set)  # on the stream, by any attempt
    written: set[str] = field(default_factory=set)  # what the LLM wrote in this attempt

    def new_attempt(self) -> None:
        self.written.clear()

    def screen(self, product_id: str) -> RejectReason | None:
        """Why the LLM's element must not be published, or None; notes it as written this attempt."""
        if product_id not in self.catalogue:
            return RejectReason.UNKNOWN_ID
        if product_id in self.written:
            return RejectReason.DUPLICATE
        self.written.add(product_id)
        return None


class Ranking:
    """One job's run. Not shared between jobs; every await yields to the other jobs."""

    def __init__(self, runtime: Runtime, job_id: str, request: RankingRequest) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.job_id = job_id
        self.request = request
        self.model = request.model or self.settings.model
        request_key = keys.request(request.request_id) if request.request_id is not None else None
        self.publisher = Publisher(runtime.scripts, job_id, self.settings.stream_ttl, request_key)
        self.checks = _Checks(request.catalogue())
        self.report = Report()
        self.count = 0  # the rank of the last published item (ranks are given in Redis)
        self.attempt = 0
        self._pending: list[_Pending] = []
        self._task: asyncio.Task[Result] | None = None
        self._abort: ErrorCode | None = None
        self._deadline = time.monotonic() + self.settings.job_timeout

    # --- the whole job ---------------------------------------------------------------------

    async def run(self) -> Result:
        self._task = task = asyncio.current_task()
        assert task is not None
        started = time.monotonic()
        metrics.jobs_in_progress.inc()
        try:
            if self._abort is not None:
                raise asyncio.CancelledError  # stopped before it began
            result = await self._run()
        except asyncio.CancelledError:  # stopped from outside: RQ's timeout, a shutdown
            task.uncancel()  # the stop is handled here; the terminal write must not see it
            result = await self._fail(
                self._abort or ErrorCode.WORKER_LOST, "the worker stopped the job", True
            )
        except Exception as exc:
            log.exception("job %s failed", self.job_id)
            result = await self._fail(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}", False)
        finally:
            metrics.jobs_in_progress.dec()
            metrics.job_duration.observe(time.monotonic() - started)
        if result.ending is Ending.DONE:
            metrics.jobs.labels(Ending.DONE).inc()
        elif result.error is not None and result.ending is Ending.ERROR:
            metrics.jobs.labels(result.error.code).inc()
        return result

    def abort(self, code: ErrorCode) -> None:
        """End the job from outside its task, with `code` (call on the loop's thread)."""
        self._abort = self._abort or code  # noted even before the task's first step: run() checks it
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _run(self) -> Result:
        tries = 0  # counted here too: a START that Redis never answered has no number
        while True:
            tries += 1
            try:
                attempt = await self.publisher.start(self.model)
                if attempt is Refused.JOB_ENDED:
                    return Result(Ending.SKIPPED)
                if attempt is Refused.CANCEL_REQUESTED:
                    return await self._fail(ErrorCode.CANCELLED, "cancelled before the job started", False)
                assert isinstance(attempt, Attempt)
                self._begin(attempt)
                if self._nothing_left():  # earlier attempts published all there is to ask for
                    return await self._done()
                await self._attempt(self._deadline)
            except Stopped as stop:
                if stop.reason is StopReason.JOB_ENDED:
                    return Result(Ending.SKIPPED)
                if stop.reason is StopReason.CANCELLED:
                    return await self._fail(ErrorCode.CANCELLED, "cancelled on request", False)
                if stop.reason is StopReason.JOB_TIMEOUT:
                    return await self._fail(
                        ErrorCode.TIMEOUT, "the job ran past RANKSTREAM_JOB_TIMEOUT", True
                    )
                failure = retry.stopped(stop.reason)
            except Exception as exc:
                failure = retry.classify(exc)
            else:
                if self.count > 0:
                    return await self._done()
                failure = retry.NO_ITEMS
            ended = await self._retry_or_fail(failure, max(tries, self.attempt), self._deadline)
            if ended is not None:
                return ended

    def _begin(self, attempt: Attempt) -> None:
        self._pending.clear()  # what a failed attempt left unpublished is the next one's to find
        self.checks.new_attempt()
        self.checks.published.update(attempt.published)
        self.attempt = attempt.number
        self.count = max(self.count, len(attempt.published))
        self.report.started(attempt.enqueued_at)
        if (
            attempt.started_at is not None
        ):  # a job resumed from a lost worker keeps its first start's deadline
            first_start_deadline = attempt.started_at + self.settings.job_timeout
            self._deadline = min(self._deadline, time.monotonic() + first_start_deadline - time.time())

    def _nothing_left(self) -> bool:
        wanted = None if self.request.top_k is None else self.request.top_k - self.count
        left = len(self.request.products) - len(self.checks.published)
        return left <= 0 or (wanted is not None and wanted <= 0)

    def _chat_for_what_is_left(self, form: ResponseFormat) -> dict[str, Any]:
        """The LLM request for the candidates not yet published, asked in `form`.

        A retry continues the ranking: the LLM is not asked (and not paid) to write again what
        an earlier attempt already put on the stream.
        """
        left = [p for p in self.request.products if p.product_id not in self.checks.published]
        if len(left) == len(self.request.products):
            return prompt.chat_request(self.request, self.model, form)
        wanted = None if self.request.top_k is None else self.request.top_k - self.count
        rest = self.request.model_copy(update={"products": left, "top_k": wanted})
        return prompt.chat_request(rest, self.model, form)

    async def _retry_or_fail(self, failure: retry.Failure, tries: int, deadline: float) -> Result | None:
        """Sleep before the next attempt (None), or the result if the job must end here."""
        if failure.cause is None or tries >= self.settings.max_attempts:
            log.warning(
                "job %s attempt %d failed: %s", self.job_id, self.attempt, failure.detail or failure.message
            )
        if failure.cause is None:
            return await self._fail(failure.code, failure.message, False)
        if tries >= self.settings.max_attempts:
            return await self._fail(failure.code, f"gave up after {tries} attempts: {failure.message}", True)
        pause = retry.backoff(tries, failure.retry_after)
        if time.monotonic() + pause >= deadline:
            return await self._fail(
                ErrorCode.TIMEOUT, f"no time left to retry after: {failure.message}", True
            )
        metrics.llm_retries.labels(failure.cause).inc()
        log.warning(
            "job %s attempt %d: %s; retrying in %.2fs",
            self.job_id,
            self.attempt,
            failure.detail or failure.message,
            pause,
        )
        await asyncio.sleep(pause)
        return None

    # --- one attempt: one LLM stream ---------------------------------------------------------

    async def _attempt(self, deadline: float) -> None:
        """One attempt, in the response format the server takes (auto: the next one if refused)."""
        formats, base_url = self.runtime.formats, self.runtime.llm_base_url
        form = formats.form(self.model, base_url)
        while True:
            try:
                return await self._stream(deadline, self._chat_for_what_is_left(form))
            except openai.APIStatusError as exc:
                fallback = formats.fall_back(self.model, base_url, form) if refused(exc, form) else None
                if fallback is None:
                    raise
                metrics.llm_retries.labels(RetryCause.RESPONSE_FORMAT).inc()
                form = fallback

    async def _stream(self, deadline: float, chat: dict[str, Any]) -> None:
        extractor = ItemExtractor(Recommendation)
        task = asyncio.current_task()
        assert task is not None
        async with stream_deltas(self.runtime.llm, chat) as (state, batches):
            watchdog = Watchdog(self.settings, deadline, state, self.publisher.cancel_requested)
            watchdog.start(task)
            try:
                async for texts in batches:
                    for text in texts:
                        for result in extractor.feed(text):
                            self._take(result, state)
                    if self._pending and await self._flush_watched(watchdog):
                        return  # top_k reached: leaving the block closes the stream
            except asyncio.CancelledError:
                if watchdog.reason is None or self._abort is not None:
                    raise  # not (only) the watchdog's: the whole job is being stopped
                task.uncancel()
                raise Stopped(watchdog.reason) from None
            finally:
                watchdog.stop()
                self.report.stream_ended(state, chat)
        for result in extractor.close():
            self._take(result, state)
        if not await self._flush() and self.settings.fallback and self.count > 0:
            await self._fill_from_catalogue()

    def _take(self, result: Item[Recommendation] | Rejected, state: StreamState) -> None:
        """Check one element; a good one waits for the end of its chunk to be published."""
        if isinstance(result, Rejected):
            self.report.reject(RejectReason(result.reason))
            return
        product_id = result.value.product_id
        refused = self.checks.screen(product_id)
        if refused is not None:
            self.report.reject(refused)
            return
        if product_id in self.checks.published:
            return  # an earlier attempt published it: the ranking goes on, nothing is wrong
        self.report.first_token(state)
        fields = {"product_name": self.checks.catalogue[product_id], "source": Source.LLM}
        fields.update(result.value.model_dump(exclude={"product_id"}))
        self._pending.append(_Pending(product_id, fields, time.perf_counter(), state))

    async def _flush_watched(self, watchdog: Watchdog) -> bool:
        """`_flush` that the watchdog does not cut in half: a stop waits for the replies."""
        watchdog.busy = True
        try:
            reached = await self._flush()
        finally:
            watchdog.busy = False
        if watchdog.reason is not None:
            raise Stopped(watchdog.reason)
        return reached

    async def _flush(self) -> bool:
        """Publish what is pending, in order, up to top_k; True once top_k items are out."""
        top_k = self.request.top_k
        while self._pending and (top_k is None or self.count < top_k):
            room = len(self._pending) if top_k is None else top_k - self.count
            batch, self._pending = self._pending[:room], self._pending[room:]
            replies = await self.publisher.publish([(p.product_id, p.fields) for p in batch])
            for item, reply in zip(batch, replies, strict=True):
                self._settle(item, reply)
        self._pending.clear()  # past top_k: never published
        return top_k is not None and self.count >= top_k

    def _settle(self, item: _Pending, reply: Published | Refused) -> None:
        if isinstance(reply, Published):
            self.checks.published.add(item.product_id)
            self.count = max(self.count, reply.rank)
            self.report.published(reply.rank, item.closed, item.state)
        elif reply is Refused.DUPLICATE:  # an earlier attempt (maybe another worker's) published it
            self.checks.published.add(item.product_id)
        elif reply is Refused.CANCEL_REQUESTED:
            raise Stopped(StopReason.CANCELLED)
        else:
            raise Stopped(StopReason.JOB_ENDED)

    async def _fill_from_catalogue(self) -> None:
        """The LLM left some candidates out: append them in catalogue order, marked `fallback`."""
        now = time.perf_counter()
        for product_id, name in self.checks.catalogue.items():
            if product_id not in self.checks.published:
                fields = {"product_name": name, "source": Source.FALLBACK}
                self._pending.append(_Pending(product_id, fields, now, None))
        await self._flush()

    # --- the terminal event ------------------------------------------------------------------

    async def _done(self) -> Result:
        async def write() -> bool:
            started, first_item = await self.publisher.moments()
            timings = self.report.timings(started, first_item)
            done = Done(
                count=self.count,
                rejected=dict(self.report.rejected),
                timings=timings,
                usage=self.report.usage,
            )
            return await self.publisher.done(done)

        return Result(await self._terminal(Ending.DONE, write), self.count)

    async def _fail(self, code: ErrorCode, message: str, retryable: bool) -> Result:
        failed = Failed(code=code, message=message, retryable=retryable, attempt=self.attempt)
        ending = await asyncio.shield(self._terminal(Ending.ERROR, lambda: self.publisher.error(failed)))
        return Result(ending, self.count, failed)

    async def _terminal(self, ending: Ending, write: Callable[[], Awaitable[bool]]) -> Ending:
        """Write the terminal event, waiting out a Redis outage: a stream must not be left open.

        Tries until the job's deadline, and at least RANKSTREAM_LEASE_SECONDS. Answers `ending`
        when written, SKIPPED when another writer had ended the job, LOST when Redis never took it.
        """
        give_up = max(self._deadline, time.monotonic() + self.settings.lease_seconds)
        pause = TERMINAL_RETRY_FIRST
        while True:
            try:
                return ending if await write() else Ending.SKIPPED
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                if time.monotonic() + pause > give_up:
                    log.error("job %s: Redis never took its terminal event: %s", self.job_id, exc)
                    return Ending.LOST
                log.warning("job %s: Redis refused its terminal event (%s); trying again", self.job_id, exc)
            except Exception:
                log.exception("job %s: could not publish its terminal event", self.job_id)
                return Ending.LOST
            await asyncio.sleep(pause)
            pause = min(pause * 2, TERMINAL_RETRY_MAX)
