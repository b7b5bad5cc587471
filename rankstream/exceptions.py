"""Every error rankstream raises on purpose, in one tree under RankstreamError."""

from __future__ import annotations

from typing import Any


class RankstreamError(Exception):
    """Base of every error rankstream raises on purpose."""


class InvalidRequest(RankstreamError, ValueError):
    """A ranking request was refused; nothing was enqueued.

    `errors` lists `{"field": "products.3.product_id", "message": "..."}` dicts, so callers
    (CLI, gateway) can name each offending field.
    """

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))

    @property
    def fields(self) -> list[str]:
        return [e["field"] for e in self.errors]


class JobNotFound(RankstreamError, LookupError):
    """No job with this id was ever enqueued here."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job {job_id!r}")


class JobGone(RankstreamError, LookupError):
    """The job existed, but its stream has expired (RANKSTREAM_STREAM_TTL)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id!r} has expired; its events are gone")


class JobFailed(RankstreamError):
    """A job gave up; carries the code and retryability its `error` event reports."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        self.code = code
        self.message = message
        self.retryable = retryable
        super().__init__(f"{code}: {message}")


class RedisUnavailable(RankstreamError):
    """No Redis could be found or started."""


class LLMNotConfigured(RankstreamError):
    """A worker was started with no LLM to talk to: it refuses rather than answer with a simulator."""

    def __init__(self) -> None:
        super().__init__(
            "no LLM configured: set OPENAI_API_KEY for the OpenAI API, or OPENAI_BASE_URL for any "
            "OpenAI-compatible server (it ends in /v1, e.g. http://127.0.0.1:8001/v1); to try rankstream "
            "without one, run `rankstream llm-sim` and point OPENAI_BASE_URL at it, or run `rankstream demo`"
        )


class RequestConflict(RankstreamError, ValueError):
    """The request_id is taken by a request with another body; nothing was enqueued."""

    def __init__(self, request_id: str, job_id: str) -> None:
        self.request_id = request_id
        self.job_id = job_id
        super().__init__(
            f"request_id {request_id!r} was already used for job {job_id} with a different request body"
        )
