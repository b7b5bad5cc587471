"""One generation on the wire: sending a planned answer, paced, until done, dropped or abandoned.

Owns the pacing (time to first token, tokens per second, on an absolute schedule), watching
for the client to go away or the server to shut down, and the faults that act while sending:
`disconnect` (the TCP connection is dropped halfway), `stall` (silence halfway),
`slow_first_token` (silence from the start), the bad endings of `wire.STREAM_ENDINGS`
(halfway), `broken_after_done` and the `framing_*` quirks (`wire.framed`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import anyio
from fastapi.responses import Response
from starlette.types import Message, Receive, Scope, Send

from .plan import Plan
from .record import Record
from .wire import DONE, SSE_HEADERS, STREAM_ENDINGS, Chunks, completion, framed

DROP_KEY = "rankstream.sim.drop_connection"


class Generation(Response):
    """Sends one planned answer, paced, while watching for the client to go away.

    The schedule is absolute (token i at `started + ttft + i / tokens_per_second`) so the time
    spent sleeping and writing never accumulates into drift.
    """

    def __init__(
        self, plan: Plan, record: Record, drop: Callable[[], None] | None, closing: asyncio.Event
    ) -> None:
        super().__init__(media_type="text/event-stream" if plan.stream else "application/json")
        self.plan = plan
        self.record = record
        self._drop = drop
        self._closing = closing
        self._dropping = False
        self._client_gone = anyio.Event()
        self._loop_time = asyncio.get_running_loop().time

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._watch_client, receive, group.cancel_scope)
                group.start_soon(self._watch_shutdown, group.cancel_scope)
                await (self._stream(send) if self.plan.stream else self._whole(send))
                group.cancel_scope.cancel()
        finally:
            self.record.finish()  # dropped on purpose, or cancelled by a server shutdown

    async def _watch_client(self, receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._client_gone.set()
        if self.record.finished_at is None and not self._dropping:
            self.record.finish(client_closed=True)
            scope.cancel()

    async def _watch_shutdown(self, scope: anyio.CancelScope) -> None:
        """A server going away drops its connections; waiting for stalled ones would never end."""
        await self._closing.wait()
        await self._drop_connection()
        scope.cancel()

    def _due(self, index: int) -> float:
        return self.plan.started + self.plan.ttft + index / self.plan.tokens_per_second

    async def _until_token(self, index: int) -> None:
        delay = self._due(index) - self._loop_time()
        # Behind schedule, still yield once, so one stream cannot starve the others.
        await asyncio.sleep(max(delay, 0))

    def _tokens_due(self, sent: int, limit: int) -> int:
        """How many tokens should be out by now: at least one more than `sent`, at most `limit`."""
        elapsed = self._loop_time() - self._due(0)
        return max(sent + 1, min(limit, int(elapsed * self.plan.tokens_per_second) + 1))

    async def _stream(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": self._with_request_id(SSE_HEADERS)}
        )
        fault, tokens = self.plan.fault, self.plan.tokens
        if fault == "slow_first_token":
            await anyio.sleep_forever()
        chunks = Chunks(self.plan)
        halfway = fault in ("disconnect", "stall") or fault in STREAM_ENDINGS
        stop_at = len(tokens) // 2 if halfway else len(tokens)
        sent = 0
        while sent < stop_at:
            await self._until_token(sent)
            due = self._tokens_due(sent, stop_at)
            # Tokens already due (the loop fell behind) go out in one write: still one SSE event
            # each, but one syscall, so a busy simulator catches up instead of drifting.
            batch = b"".join(chunks.token(token) for token in tokens[sent:due])
            if sent == 0:
                self.record.first_token_at = time.time()
                batch = chunks.opening() + batch
            await send(_body(framed(batch, fault)))
            sent = self.record.tokens_sent = due
        if fault == "stall":
            await anyio.sleep_forever()
        if fault == "disconnect":
            await self._drop_connection()
            return
        if fault in STREAM_ENDINGS:
            ending, then_done = STREAM_ENDINGS[fault]
            await send(_body(ending + (DONE if then_done else b""), more_body=False))
            self.record.finish(completed=True)
            return
        closing = framed(chunks.closing(len(tokens)), fault)
        if fault == "broken_after_done":
            await send(_body(closing))
            self.record.finish(completed=True)
            await self._drop_connection()
            return
        await send(_body(closing, more_body=False))
        self.record.finish(completed=True)

    async def _whole(self, send: Send) -> None:
        fault, count = self.plan.fault, len(self.plan.tokens)
        if fault in ("stall", "slow_first_token"):
            await anyio.sleep_forever()
        if fault == "disconnect":
            await self._until_token(count // 2)
            await self._drop_connection()
            return
        await self._until_token(max(count - 1, 0))
        body = json.dumps(completion(self.plan)).encode()
        headers = self._with_request_id([(b"content-type", b"application/json")])
        self.record.first_token_at = time.time()
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(_body(body, more_body=False))
        self.record.tokens_sent = count
        self.record.finish(completed=True)

    def _with_request_id(self, base: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        return [*base, (b"x-request-id", self.plan.id.encode())]

    async def _drop_connection(self) -> None:
        """Close the TCP connection mid-answer, so the client sees a broken response, not an end.

        Waiting for the server to notice the close keeps it from reporting an unfinished
        response as an application error. Without access to the transport (another ASGI
        server), returning without finishing makes the server close the connection itself.
        """
        self._dropping = True
        if self._drop is not None:
            self._drop()
            with anyio.move_on_after(1.0):
                await self._client_gone.wait()


def _body(data: bytes, more_body: bool = True) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more_body}


def transport_closer(send: Send) -> Callable[[], None] | None:
    """uvicorn's `send` is a bound method of an object holding the connection's transport."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    close = getattr(transport, "close", None)
    return close if callable(close) else None
