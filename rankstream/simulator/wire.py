"""OpenAI's wire format: `chat.completion.chunk` SSE events, the `chat.completion` body, errors."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse

from .answer import compact
from .plan import Plan

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
DONE = b"data: [DONE]\n\n"
_DONE = DONE


class Chunks:
    """Pre-serialised `chat.completion.chunk` templates: one json.dumps per token, no models."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        usage = ',"usage":null' if plan.include_usage else ""
        self._envelope = (
            f'data: {{"id":"{plan.id}","object":"chat.completion.chunk","created":{plan.created},'
            f'"model":{json.dumps(plan.model)},"system_fingerprint":"fp_rankstream_sim",'
        )
        self._head = self._envelope + '"choices":[{"index":0,"delta":'
        self._tail = ',"logprobs":null,"finish_reason":null}]' + usage + "}\n\n"
        self._token_head = self._head + (
            '{"tool_calls":[{"index":0,"function":{"arguments":' if plan.tool else '{"content":'
        )
        self._token_tail = ("}}]}" if plan.tool else "}") + self._tail

    def opening(self) -> bytes:
        """The first chunk: the role, and for a tool call its id, type and name."""
        if self.plan.tool is None:
            delta = '{"role":"assistant","content":"","refusal":null}'
        else:
            call_id, name = self.plan.tool
            call = {
                "index": 0,
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            delta = '{"role":"assistant","content":null,"tool_calls":[' + compact(call) + '],"refusal":null}'
        return (self._head + delta + self._tail).encode()

    def token(self, token: str) -> bytes:
        return (self._token_head + json.dumps(token) + self._token_tail).encode()

    def closing(self, sent: int) -> bytes:
        """The finish chunk, the usage chunk if asked for, and [DONE]."""
        finish = self._head + '{},"logprobs":null,"finish_reason":' + json.dumps(self.plan.finish_reason)
        out = finish + "}]" + (',"usage":null' if self.plan.include_usage else "") + "}\n\n"
        if self.plan.include_usage:
            usage = compact(self.plan.usage(sent))
            out += self._envelope + '"choices":[],"usage":' + usage + "}\n\n"
        return out.encode() + _DONE


def completion(plan: Plan) -> dict[str, Any]:
    """The non-streaming `chat.completion` body."""
    text = "".join(plan.tokens)
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
    if plan.tool is not None:
        call = {"id": plan.tool[0], "type": "function", "function": {"name": plan.tool[1], "arguments": text}}
        message.update(content=None, tool_calls=[call])
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": plan.finish_reason}
    return {
        "id": plan.id,
        "object": "chat.completion",
        "created": plan.created,
        "model": plan.model,
        "system_fingerprint": "fp_rankstream_sim",
        "choices": [choice],
        "usage": plan.usage(len(plan.tokens)),
    }


def error(status: int, message: str, kind: str, code: str | None = None, **extra: Any) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": extra.pop("param", None), "code": code}}
    return JSONResponse(body, status_code=status, headers=extra.pop("headers", None))


def bad_request(message: str, param: str | None = None) -> JSONResponse:
    return error(400, message, "invalid_request_error", param=param)


# The bytes a halfway stream-ending fault sends, and whether [DONE] follows them.
STREAM_ENDINGS: dict[str, tuple[bytes, bool]] = {
    "no_done": (b"", False),
    "error_line": (
        b'error: {"code":500,"message":"llama_decode failed (simulated) in /srv/llama/ctx.cpp","type":"server_error"}\n\n',
        True,
    ),
    "error_event": (
        b'event: error\ndata: {"message":"upstream went away (simulated)","code":502}\n\n',
        False,
    ),
    "error_object": (
        b'data: {"object":"error","message":"engine dead (simulated)","type":"InternalServerError","param":null,"code":500}\n\n',
        True,
    ),
}

_NOISE = b": ping\n\ndata: keep-alive\n\ndata:\n\nid: 7\nretry: 1000\n\n"


def framed(data: bytes, fault: str) -> bytes:
    """The SSE bytes as a server with this framing quirk writes them (others: unchanged)."""
    if fault == "framing_keepalive":
        return _NOISE + data.replace(_DONE, b"data: [DONE] \n\n")
    if fault == "framing_crlf":
        return data.replace(b"\n", b"\r\n")
    if fault == "framing_cr":
        return data.replace(b"\n", b"\r")
    return data
