"""The LLM call: one streamed chat completion, read as raw SSE bytes, yielding text deltas.

The `openai` client still does the HTTP (auth, base URL, error mapping), but the body is
read raw: building a pydantic object per chunk costs far more than the rest of the worker.
A delta is the message content or, when the model answers with a tool call, the call's
argument fragment; both are just text to the extractor.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any

import httpx2
import openai

from rankstream.models import Usage
from rankstream.settings import Settings

from .network import http_client, limits_for

# A server that wants no key (a local vLLM, llama.cpp, the simulator) still gets one: the client insists.
KEYLESS = "no-key"


@dataclass
class StreamState:
    """What one LLM call has shown so far; read by the job for timings, usage and deadlines."""

    requested_at: float  # time.time() when the request left
    first_token_at: float | None = None
    last_chunk_at: float = 0.0  # time.monotonic() of the last bytes received
    usage: Usage | None = None
    finish_reason: str | None = None
    completed: bool = False  # the server said [DONE]
    chunks: int = field(default=0)


class LLMStreamError(Exception):
    """The server sent an error inside the stream, or broke the SSE framing."""


def make_client(settings: Settings, base_url: str | None = None) -> openai.AsyncOpenAI:
    """One client per worker process: its connection pool is shared by every job."""
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else KEYLESS
    # The job's watchdog enforces first-token, idle and job deadlines precisely; the socket
    # timeouts here only catch what a watchdog cannot (a connect that never completes).
    read = max(settings.first_token_timeout, settings.idle_timeout) + 5
    timeout = httpx2.Timeout(connect=10.0, read=read, write=10.0, pool=10.0)
    return openai.AsyncOpenAI(
        api_key=key,
        base_url=base_url or settings.openai_base_url,
        max_retries=0,  # the job retries, so it can count causes, keep deadlines and say `started`
        timeout=timeout,
        http_client=http_client(timeout, limits=limits_for(settings.concurrency)),
    )


# A chunk's text is the JSON string after "content" or "arguments" (there is one choice, n=1).
# Quotes inside JSON strings are escaped, so this marker can only be a real key; decoding just
# that string (json's C scanstring) costs a fraction of json.loads of the whole chunk.
_TEXT_KEY = re.compile(rb'"(?:content|arguments)"\s*:\s*"')
# Chunks that carry more than text: read in full.
_METADATA = re.compile(rb'"(?:finish_reason"\s*:\s*"|usage"\s*:\s*\{|error")')


def payload_text(payload: bytes, state: StreamState) -> str:
    """The text one SSE `data` payload adds; notes usage, finish reason and errors in `state`."""
    match = _TEXT_KEY.search(payload)
    if match is not None and _METADATA.search(payload) is None:
        text: str = scanstring(payload[match.end() :].decode(), 0)[0]
        return text
    event = json.loads(payload)
    _note_metadata(event, state)
    return delta_text(event)


def delta_text(event: dict[str, Any]) -> str:
    """The text a chat.completion.chunk adds: content, else tool-call arguments."""
    choices = event.get("choices")
    if not choices:
        return ""
    delta = choices[0].get("delta") or {}
    content = delta.get("content")
    if content:
        return str(content)
    calls = delta.get("tool_calls")
    if calls:
        function = calls[0].get("function") or {}
        return str(function.get("arguments") or "")
    return ""


class SSEDecoder:
    """Splits an SSE byte stream into `data` payloads; lines may arrive in any pieces."""

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        if self._pending:
            chunk = self._pending + chunk
        *lines, self._pending = chunk.split(b"\n")
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:  # a blank line ends the event
                if self._data:
                    yield b"\n".join(self._data)
                    self._data = []
            elif line.startswith(b"data:"):
                self._data.append(line[6:] if line[5:6] == b" " else line[5:])
            # comments (":") and other fields (event, id, retry) carry nothing for us


@asynccontextmanager
async def stream_deltas(
    client: openai.AsyncOpenAI, request: dict[str, Any]
) -> AsyncIterator[tuple[StreamState, AsyncIterator[list[str]]]]:
    """Open the streamed completion; yields (state, batches of text deltas).

    Leaving the context closes the HTTP response, so a consumer that stops early (top_k,
    cancel, deadline) stops the tokens too.
    """
    state = StreamState(requested_at=time.time(), last_chunk_at=time.monotonic())
    body = {**request, "stream": True}
    async with client.chat.completions.with_streaming_response.create(**body) as response:
        yield state, _deltas(response.http_response, state)


async def _deltas(response: httpx2.Response, state: StreamState) -> AsyncIterator[list[str]]:
    decoder = SSEDecoder()
    monotonic = time.monotonic
    async for chunk in response.aiter_bytes():
        if state.completed:
            continue  # read the body to its end, so the connection goes back to the pool
        state.last_chunk_at = monotonic()
        texts: list[str] = []
        for payload in decoder.feed(chunk):
            if payload == b"[DONE]":
                state.completed = True
                break
            text = payload_text(payload, state)
            if text:
                texts.append(text)
        if texts:
            if state.first_token_at is None:
                state.first_token_at = time.time()
            state.chunks += len(texts)
            yield texts


def _note_metadata(event: dict[str, Any], state: StreamState) -> None:
    if "error" in event:
        raise LLMStreamError(str(event["error"]))
    usage = event.get("usage")
    if usage:
        state.usage = Usage(
            prompt_tokens=usage.get("prompt_tokens") or 0,
            completion_tokens=usage.get("completion_tokens") or 0,
            total_tokens=usage.get("total_tokens") or 0,
        )
    choices = event.get("choices")
    if choices and choices[0].get("finish_reason"):
        state.finish_reason = choices[0]["finish_reason"]


async def complete(client: openai.AsyncOpenAI, request: dict[str, Any]) -> str:
    """The same request, unstreamed: the whole answer at once (the demo's comparison)."""
    body = {k: v for k, v in request.items() if k != "stream_options"}  # streaming-only option
    response = await client.chat.completions.create(**body, stream=False)
    message = response.choices[0].message
    if message.tool_calls:
        return "".join(call.function.arguments for call in message.tool_calls if call.type == "function")
    return message.content or ""
