"""The LLM call: one streamed chat completion, read as raw SSE bytes, yielding text deltas.

The `openai` client decides what a request carries (URL, key, headers, environment) and maps
errors; the streamed POST itself goes over worker/http_stream.py (`LLMClient`), and its body
is read raw: an SDK object per chunk costs far more than the rest of the worker. A delta is
the message content or, when the model answers with a tool call, the call's argument
fragment; both are just text to the extractor. How a stream ends is told truly: complete only
with a finish_reason or [DONE], failed by any error the server writes into it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any

import httpx2
import openai

from rankstream.models import Usage
from rankstream.settings import Settings

from .http_stream import Response, Route, StreamingPost
from .network import http_client, limits_for
from .sse import ERROR, SSEDecoder
from .transport import BackendTransport

log = logging.getLogger("rankstream.worker")

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
    skipped: int = 0  # events that were not JSON chunks (keep-alives and the like)
    chars: int = 0  # characters of text received: what usage is estimated from when none is sent


class LLMStreamError(Exception):
    """The stream failed: the server reported an error inside it, or it ended too soon."""

    @classmethod
    def reported(cls, error: Any) -> LLMStreamError:
        """The server's own error, told by its type and code; its text goes to the log only."""
        detail = error.get("error", error) if isinstance(error, dict) else error
        kind = code = None
        if isinstance(detail, dict):
            kind, code = detail.get("type"), detail.get("code")
        log.warning("the LLM reported an error in its stream: %.500s", json.dumps(error, default=str))
        said = ", ".join(f"{k} {v}" for k, v in (("type", kind), ("code", code)) if v is not None)
        return cls("the LLM reported an error in its stream" + (f" ({said})" if said else ""))


class LLMClient:
    """One per worker process, shared by every job: the openai client, and the streamed POST.

    The openai client decides everything a request carries: base URL, key, organisation and
    project, its headers, its environment. The streamed completion, which the worker sends a
    thousand times a minute, is then sent over worker/http_stream.py with exactly the URL and
    headers the client would have sent (captured once from the client itself), on the route
    httpx2 would have taken (its environment proxies). A route that module does not serve
    (a SOCKS or https:// proxy, a redirect) stays on the openai client's own HTTP stack.
    """

    def __init__(
        self, sdk: openai.AsyncOpenAI, http: httpx2.AsyncClient, *, hand_written: bool = True
    ) -> None:
        """`http` is the client `sdk` was made with (worker/network.py's `http_client`)."""
        self.sdk = sdk
        self._http = http
        timeout = sdk.timeout
        self._timeout = timeout if isinstance(timeout, httpx2.Timeout) else httpx2.Timeout(timeout)
        self._hand_written = hand_written
        self._post: asyncio.Future[StreamingPost | None] | None = None

    async def streaming_post(self) -> StreamingPost | None:
        """The hand-written path for the streamed completion, or None: use the openai client's."""
        if not self._hand_written:
            return None
        if self._post is None:
            self._post = asyncio.ensure_future(self._prepare())
        try:
            return await asyncio.shield(self._post)
        except Exception:
            self._post = None  # try again next time (a capture that failed says why on the SDK path)
            raise

    async def _prepare(self) -> StreamingPost | None:
        request = await _captured_request(self.sdk)
        url = request.url
        transport = self._http._transport_for_url(url)
        if url.scheme not in ("http", "https") or not isinstance(transport, BackendTransport):
            return None
        proxy = transport.proxy
        if proxy is not None and proxy.url.scheme != "http":
            return None  # TLS to the proxy itself, or SOCKS: httpcore2 does those
        headers = [(name, value) for name, value in request.headers.raw if name.lower() not in _OWN_HEADERS]
        headers.append((b"Accept-Encoding", b"identity"))  # a compressed stream arrives in lumps
        return StreamingPost(url, headers, Route.through(url, proxy), transport.ssl_context, self._timeout)

    async def close(self) -> None:
        if self._post is not None and self._post.done() and not self._post.exception():
            post = self._post.result()
            if post is not None:
                await post.aclose()
        await self.sdk.close()


# Headers the hand-written POST writes itself, per connection or per body.
_OWN_HEADERS = {b"host", b"content-length", b"transfer-encoding", b"connection", b"accept-encoding"}


class _Captured(Exception):
    def __init__(self, request: httpx2.Request) -> None:
        super().__init__("captured")
        self.request = request


class _Capture(httpx2.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        raise _Captured(request)


async def _captured_request(sdk: openai.AsyncOpenAI) -> httpx2.Request:
    """The request the openai client would send for a streamed chat completion, never sent."""
    capture = httpx2.AsyncClient(transport=_Capture())
    try:
        await sdk.with_options(http_client=capture, max_retries=0).chat.completions.create(
            model="-", messages=[{"role": "user", "content": "-"}], stream=True
        )
    except _Captured as captured:
        return captured.request
    except openai.APIConnectionError as exc:  # an SDK that wraps what its transport raises
        if isinstance(exc.__cause__, _Captured):
            return exc.__cause__.request
        raise
    finally:
        await capture.aclose()
    raise AssertionError("the capture transport answered")


def make_client(settings: Settings, base_url: str | None = None) -> LLMClient:
    """One client per worker process: its connection pool is shared by every job."""
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else KEYLESS
    # The job's watchdog enforces first-token, idle and job deadlines precisely; the socket
    # timeouts here only catch what a watchdog cannot (a connect that never completes).
    read = max(settings.first_token_timeout, settings.idle_timeout) + 5
    timeout = httpx2.Timeout(connect=10.0, read=read, write=10.0, pool=10.0)
    http = http_client(timeout, limits=limits_for(settings.concurrency))
    sdk = openai.AsyncOpenAI(
        api_key=key,
        base_url=base_url or settings.openai_base_url,
        max_retries=0,  # the job retries, so it can count causes, keep deadlines and say `started`
        timeout=timeout,
        http_client=http,
    )
    return LLMClient(sdk, http, hand_written=settings.llm_http == "hand-written")


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


@asynccontextmanager
async def stream_deltas(
    client: LLMClient, request: dict[str, Any]
) -> AsyncIterator[tuple[StreamState, AsyncIterator[list[str]]]]:
    """Open the streamed completion; yields (state, batches of text deltas).

    Leaving the context closes the HTTP response, so a consumer that stops early (top_k,
    cancel, deadline) stops the tokens too.
    """
    state = StreamState(requested_at=time.time(), last_chunk_at=time.monotonic())
    body = {**request, "stream": True}
    post = await client.streaming_post()
    if post is not None:
        response = await post.post(
            json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        )
        try:
            if 200 <= response.status < 300:
                yield state, _deltas(response.aiter_bytes(), state)
                return
            if not 300 <= response.status < 400:
                raise await _status_error(client, post, response)
        finally:
            response.release(drain=state.completed)
        # a redirect: the openai client's stack follows it, as it always has
    async with client.sdk.chat.completions.with_streaming_response.create(**body) as sdk_response:
        yield state, _deltas(sdk_response.http_response.aiter_bytes(), state)


async def _status_error(client: LLMClient, post: StreamingPost, response: Response) -> openai.APIStatusError:
    """The openai client's own error for an answer that is not a success (RateLimitError, ...)."""
    content = await response.read()
    headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in response.head.headers]
    as_httpx = httpx2.Response(response.status, headers=headers, content=content, request=post.request)
    return client.sdk._make_status_error_from_response(as_httpx)


async def _deltas(body: AsyncIterator[bytes], state: StreamState) -> AsyncIterator[list[str]]:
    decoder = SSEDecoder()
    monotonic = time.monotonic
    async for chunk in body:
        state.last_chunk_at = monotonic()
        texts: list[str] = []
        for name, payload in decoder.feed(chunk):
            if name == ERROR:
                raise LLMStreamError.reported(_loads_or_text(payload))
            if payload.startswith(b"[DONE]"):  # as the openai SDK reads it: trailing bytes too
                state.completed = True
                break
            text = _text_or_skip(payload, state)
            if text:
                texts.append(text)
        if texts:
            if state.first_token_at is None:
                state.first_token_at = time.time()
            state.chunks += len(texts)
            state.chars += sum(map(len, texts))
            yield texts
        if state.completed:
            return  # no more reads: whatever the connection does after [DONE] cannot spoil the answer
    if not state.completed and state.finish_reason is None:
        raise LLMStreamError("the LLM stream ended before the answer did (no finish_reason, no [DONE])")


def _text_or_skip(payload: bytes, state: StreamState) -> str:
    """A payload's text; one that is not a JSON chunk (a keep-alive, an empty line) is skipped."""
    try:
        return payload_text(payload, state)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        if payload.strip():
            state.skipped += 1
            if state.skipped == 1:
                log.warning("skipped an LLM stream event that is not a JSON chunk: %.80r", payload)
        return ""


def _loads_or_text(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return payload.decode(errors="replace")


def _note_metadata(event: Any, state: StreamState) -> None:
    if not isinstance(event, dict):
        raise ValueError("not a JSON object")
    if event.get("error"):  # as the openai SDK reads it; vLLM sends the error object itself
        raise LLMStreamError.reported(event)
    if event.get("object") == "error":
        raise LLMStreamError.reported(event)
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


async def complete(client: LLMClient, request: dict[str, Any]) -> str:
    """The same request, unstreamed: the whole answer at once (the demo's comparison)."""
    body = {k: v for k, v in request.items() if k != "stream_options"}  # streaming-only option
    response = await client.sdk.chat.completions.create(**body, stream=False)
    message = response.choices[0].message
    if message.tool_calls:
        return "".join(call.function.arguments for call in message.tool_calls if call.type == "function")
    return message.content or ""
