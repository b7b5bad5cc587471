"""The retry policy: which failures of an attempt are worth another, and how long to wait.

An attempt fails because the LLM refused or broke (HTTP status, connection, a stream error),
because Redis did, because the watchdog stopped it (first-token or idle timeout), or because
the answer held no valid item. Each becomes a `Failure`: the cause counted in
`rankstream_llm_retries_total{cause}`, the code the job ends with if it gives up, and the wait
the server asked for (Retry-After).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx2
import openai
import redis.exceptions

from rankstream.codes import ErrorCode, RetryCause

from .llm import LLMStreamError
from .watchdog import StopReason

MAX_BACKOFF_SECONDS = 8.0


@dataclass(frozen=True, slots=True)
class Failure:
    cause: RetryCause | None  # None: not worth another attempt
    code: ErrorCode  # what the job ends with if this is the last failure
    message: str  # for the `error` event, which pages show: ours, never the provider's own text
    retry_after: float | None = None  # what the server asked for, in seconds
    detail: str = ""  # for the worker's log: the exception as raised, provider text included

    @property
    def retryable(self) -> bool:
        return self.cause is not None


NO_ITEMS = Failure(RetryCause.NO_ITEMS, ErrorCode.NO_ITEMS, "the LLM's answer held no valid item")

_STOPS = {
    StopReason.FIRST_TOKEN_TIMEOUT: "no first token within RANKSTREAM_FIRST_TOKEN_TIMEOUT",
    StopReason.IDLE_TIMEOUT: "the LLM went silent for longer than RANKSTREAM_IDLE_TIMEOUT",
}


def stopped(reason: StopReason) -> Failure:
    """A watchdog stop that ends the attempt, not the job."""
    return Failure(RetryCause.TIMEOUT, ErrorCode.TIMEOUT, _STOPS.get(reason, str(reason)))


def classify(exc: BaseException) -> Failure:
    """What an exception out of an attempt means for the job."""
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        cause = (
            RetryCause.RATE_LIMIT
            if isinstance(exc, openai.RateLimitError)
            else RetryCause.SERVER_ERROR
            if status >= 500 or status in (408, 409)
            else None
        )
        wait = retry_after(exc.response.headers)
        return Failure(cause, ErrorCode.LLM_UNAVAILABLE, _status_message(exc), wait, detail)
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
        return Failure(
            RetryCause.TIMEOUT, ErrorCode.LLM_UNAVAILABLE, "the LLM did not answer in time", None, detail
        )
    if isinstance(exc, LLMStreamError):  # its message is ours already
        return Failure(RetryCause.CONNECTION, ErrorCode.LLM_UNAVAILABLE, str(exc), None, detail)
    if isinstance(exc, openai.APIConnectionError | httpx2.TransportError | json.JSONDecodeError):
        message = "the connection to the LLM failed or broke off"
        return Failure(RetryCause.CONNECTION, ErrorCode.LLM_UNAVAILABLE, message, None, detail)
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return Failure(
            RetryCause.REDIS, ErrorCode.INTERNAL, "the worker lost its Redis connection", None, detail
        )
    return Failure(None, ErrorCode.INTERNAL, detail, None, detail)


def _status_message(exc: openai.APIStatusError) -> str:
    """ "the LLM answered HTTP 429 (rate_limit_error, rate_limit_exceeded)": the status, and the
    error's type and code where the provider gave them; not its message, which may hold anything."""
    body = exc.body.get("error", exc.body) if isinstance(exc.body, dict) else None
    said = [str(body[key]) for key in ("type", "code") if isinstance(body, dict) and body.get(key)]
    return f"the LLM answered HTTP {exc.status_code}" + (f" ({', '.join(said)})" if said else "")


def backoff(attempt: int, requested: float | None) -> float:
    """Exponential with full jitter, at least what the server asked for (Retry-After)."""
    computed = random.uniform(0, min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** (attempt - 1)))
    return max(computed, requested or 0.0)


def retry_after(headers: httpx2.Headers) -> float | None:
    """Retry-After as seconds: `retry-after-ms`, then `retry-after` in seconds or as an HTTP date."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
