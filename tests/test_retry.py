"""The retry policy: which failures get another attempt, under which cause, after how long."""

from __future__ import annotations

import statistics
import time
from email.utils import formatdate

import httpx2
import openai
import pytest
import redis.exceptions

from rankstream.codes import ErrorCode, RetryCause
from worker import retry
from worker.llm import LLMStreamError
from worker.watchdog import StopReason


def status_error(
    status: int, headers: dict[str, str] | None = None, body: object = None
) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx2.Response(status, headers=headers or {}, request=request)
    error_class = openai.RateLimitError if status == 429 else openai.APIStatusError
    return error_class(f"refused: {body}", response=response, body=body)


class TestClassify:
    @pytest.mark.parametrize(
        ("failure", "cause", "code"),
        [
            (status_error(429), RetryCause.RATE_LIMIT, ErrorCode.LLM_UNAVAILABLE),
            (status_error(500), RetryCause.SERVER_ERROR, ErrorCode.LLM_UNAVAILABLE),
            (status_error(503), RetryCause.SERVER_ERROR, ErrorCode.LLM_UNAVAILABLE),
            (status_error(408), RetryCause.SERVER_ERROR, ErrorCode.LLM_UNAVAILABLE),
            (status_error(400), None, ErrorCode.LLM_UNAVAILABLE),
            (status_error(401), None, ErrorCode.LLM_UNAVAILABLE),
            (httpx2.ReadTimeout("slow"), RetryCause.TIMEOUT, ErrorCode.LLM_UNAVAILABLE),
            (httpx2.ConnectError("refused"), RetryCause.CONNECTION, ErrorCode.LLM_UNAVAILABLE),
            (LLMStreamError("bad frame"), RetryCause.CONNECTION, ErrorCode.LLM_UNAVAILABLE),
            (redis.exceptions.ConnectionError("reset"), RetryCause.REDIS, ErrorCode.INTERNAL),
            (redis.exceptions.TimeoutError("paused"), RetryCause.REDIS, ErrorCode.INTERNAL),
            (ValueError("a bug"), None, ErrorCode.INTERNAL),
        ],
        ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
    )
    def test_each_failure_has_its_cause_and_code(
        self, failure: BaseException, cause: RetryCause | None, code: ErrorCode
    ) -> None:
        found = retry.classify(failure)
        assert (found.cause, found.code, found.retryable) == (cause, code, cause is not None)

    def test_watchdog_stops_that_end_an_attempt_are_timeouts(self) -> None:
        for reason in (StopReason.FIRST_TOKEN_TIMEOUT, StopReason.IDLE_TIMEOUT):
            failure = retry.stopped(reason)
            assert (failure.cause, failure.code) == (RetryCause.TIMEOUT, ErrorCode.TIMEOUT)
            assert "RANKSTREAM_" in failure.message


class TestRetryAfter:
    def test_milliseconds_seconds_and_http_dates_are_read(self) -> None:
        assert retry.retry_after(httpx2.Headers({"retry-after-ms": "1500"})) == 1.5
        assert retry.retry_after(httpx2.Headers({"retry-after": "7"})) == 7.0
        later = retry.retry_after(httpx2.Headers({"retry-after": formatdate(time.time() + 30, usegmt=True)}))
        assert later is not None and 25 < later <= 30
        assert retry.retry_after(httpx2.Headers({"retry-after": "soon"})) is None
        assert retry.retry_after(httpx2.Headers()) is None

    def test_a_rate_limit_carries_the_servers_wait(self) -> None:
        assert retry.classify(status_error(429, {"retry-after": "2"})).retry_after == 2.0

    def test_backoff_is_jittered_within_the_cap_and_never_undercuts_retry_after(self) -> None:
        pauses = [retry.backoff(attempt, None) for attempt in range(1, 8) for _ in range(50)]
        assert all(0 <= pause <= retry.MAX_BACKOFF_SECONDS for pause in pauses)
        assert len(set(pauses)) > 100  # jittered, not a fixed schedule
        assert all(retry.backoff(1, 3.0) >= 3.0 for _ in range(50))

    def test_backoff_doubles_with_each_attempt_until_it_reaches_the_cap(self) -> None:
        # 1,000 draws per attempt: a median of uniform jitter is then within a few percent.
        by_attempt = {n: [retry.backoff(n, None) for _ in range(1000)] for n in range(1, 11)}
        medians = {n: statistics.median(pauses) for n, pauses in by_attempt.items()}
        capped = [n for n in by_attempt if max(by_attempt[n]) > 0.9 * retry.MAX_BACKOFF_SECONDS]

        assert capped and capped[0] > 2, "the first retries already wait as long as the last"
        growing = range(1, capped[0])
        assert all(medians[n + 1] > 1.5 * medians[n] for n in growing), medians
        assert all(max(by_attempt[n]) < max(by_attempt[n + 1]) for n in growing)
        plateau = [medians[n] for n in range(capped[0] + 1, 11)]
        assert max(plateau) < 1.25 * min(plateau), medians  # past the cap, it stays there


class TestErrorsForThePageDetailsForTheLog:
    def test_a_status_error_tells_the_status_and_type_not_the_providers_text(self) -> None:
        body = {
            "error": {"message": "boom in /srv/model/engine.py line 12", "type": "server_error", "code": "e1"}
        }
        failure = retry.classify(status_error(500, body=body))

        assert failure.message == "the LLM answered HTTP 500 (server_error, e1)"
        assert "/srv/model" in failure.detail  # for the worker's log

    @pytest.mark.parametrize(
        "exc",
        [
            httpx2.ConnectError("[Errno 111] Connect call failed ('10.1.2.3', 8000)"),
            LLMStreamError.reported({"error": {"message": "secret internals", "type": "overloaded"}}),
            redis.exceptions.ConnectionError("Error 111 connecting to 10.9.9.9:6379"),
        ],
        ids=type,
    )
    def test_no_provider_text_or_address_reaches_the_message(self, exc: BaseException) -> None:
        failure = retry.classify(exc)
        assert "10." not in failure.message and "secret" not in failure.message
        assert failure.detail
