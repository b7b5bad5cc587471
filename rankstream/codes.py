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
    RESPONSE_FORMAT = "response_format"  # the server refused the form asked for: asked again in the next


class ResponseFormat(StrEnum):
    """How the LLM is asked for JSON (RANKSTREAM_RESPONSE_FORMAT)."""

    AUTO = "auto"  # json_schema first, then each next form the server accepts, remembered
    JSON_SCHEMA = "json_schema"  # response_format json_schema, strict
    JSON_OBJECT = "json_object"  # response_format json_object, the schema in the prompt
    TOOLS = "tools"  # one function to call, the schema as its parameters
    TEXT = "text"  # no response_format, the schema in the prompt

    @property
    def next(self) -> ResponseFormat | None:
        """The form `auto` tries when a server refuses this one."""
        order = list(ResponseFormat)[1:]
        at = order.index(self) if self in order else -1
        return order[at + 1] if 0 <= at < len(order) - 1 else None


class Source(StrEnum):
    """Where a published item came from."""

    LLM = "llm"
    FALLBACK = "fallback"
