"""Every code a job, an event or a metric label can carry, as enums shared by all parts.

They are `StrEnum`s: they compare equal to, and serialise as, the plain strings that the
events, the metrics and DESIGN.md spell out, so subscribers see nothing new.
"""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    STARTED = "started"
    ITEM = "item"
    DONE = "done"
    ERROR = "error"

    @property
    def terminal(self) -> bool:
        return self in (EventType.DONE, EventType.ERROR)


class ErrorCode(StrEnum):
    """Why a job ended without `done` (the `code` of its `error` event)."""

    LLM_UNAVAILABLE = "llm_unavailable"
    NO_ITEMS = "no_items"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    WORKER_LOST = "worker_lost"
    INTERNAL = "internal"


class RejectReason(StrEnum):
    """Why an element of the LLM's answer was not published."""

    INVALID = "invalid"
    TRUNCATED = "truncated"
    UNKNOWN_ID = "unknown_id"
    DUPLICATE = "duplicate"


class RetryCause(StrEnum):
    """Why an attempt failed and the job asked the LLM again."""

    RATE_LIMIT = "rate_limit"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    NO_ITEMS = "no_items"
    REDIS = "redis"


class Source(StrEnum):
    """Where a published item came from."""

    LLM = "llm"
    FALLBACK = "fallback"
