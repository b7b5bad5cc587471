"""The fault switch (`/sim/faults`), and the faults that answer with an HTTP error.

Which fault a request gets is decided once, on arrival, by `FaultSwitch.take`. Where each one
acts: `rate_limit` and `server_error` here (`refusal_for`); `garbage`, `truncate` and `numeric_ids`
in the answer's text (`answer.compose`); `disconnect`, `stall` and `slow_first_token` while it
is sent (`generation.Generation`). The names are `config.FAULTS`.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from .wire import error


class FaultSwitch:
    """The configured default fault, overridden for the next N requests (or until changed)."""

    def __init__(self, default: str) -> None:
        self.default = default
        self.override: str | None = None
        self.remaining: int | None = None

    def set(self, fault: str, count: int | None) -> None:
        self.override, self.remaining = fault, count

    def take(self) -> str:
        if self.override is None:
            return self.default
        fault = self.override
        if self.remaining is not None:
            self.remaining -= 1
            if self.remaining <= 0:
                self.override, self.remaining = None, None
        return fault

    def snapshot(self) -> dict[str, Any]:
        return {"default": self.default, "fault": self.override or self.default, "count": self.remaining}


def refusal_for(fault: str) -> JSONResponse | None:
    """The HTTP error a fault answers with instead of a completion, if it is that kind of fault."""
    if fault == "rate_limit":
        return error(
            429,
            "Rate limit reached for requests (simulated). Please try again in 1s.",
            "rate_limit_error",
            "rate_limit_exceeded",
            headers={"retry-after": "1", "retry-after-ms": "1000", "x-ratelimit-remaining-requests": "0"},
        )
    if fault == "server_error":
        return error(
            500, "The server had an error while processing your request (simulated).", "server_error"
        )
    return None


def form_of(body: dict[str, Any]) -> str:
    """How a request asks for JSON: tools, a response_format type, or text."""
    if body.get("tools"):
        return "tools"
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    return kind if isinstance(kind, str) else "text"


def form_refusal(form: str) -> JSONResponse:
    """How servers that lack a form answer it (the text of each, shortened)."""
    if form == "json_schema":  # llama-cpp-python: a 500 carrying pydantic's validation error
        return error(
            500,
            "1 validation error for CreateChatCompletionRequest\nresponse_format.type\n  Input should be "
            "'text' or 'json_object' [type=literal_error, input_value='json_schema'] (simulated)",
            "internal_server_error",
        )
    if form == "json_object":
        return error(
            400,
            "response_format of type json_object is not supported (simulated)",
            "invalid_request_error",
            param="response_format",
        )
    return error(500, "tools param requires --jinja flag (simulated)", "server_error")
