"""The watchdog: stops an attempt at its first-token, idle or job deadline, or when cancel is asked.

It runs beside the attempt as a task of its own and, when a limit passes, records why and
cancels the attempt's task; the attempt turns that cancellation into `Stopped(reason)`. The
LLM client's socket timeouts only back it up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

from rankstream.settings import Settings

from .llm import StreamState

log = logging.getLogger("rankstream.worker")

CANCEL_POLL_SECONDS = 0.25


class StopReason(StrEnum):
    FIRST_TOKEN_TIMEOUT = "first_token_timeout"  # ends the attempt
    IDLE_TIMEOUT = "idle_timeout"  # ends the attempt
    JOB_TIMEOUT = "timeout"  # ends the job
    CANCELLED = "cancelled"  # ends the job
    JOB_ENDED = "ended"  # another writer ended the job: stop without a word


class Stopped(Exception):
    """The attempt must end now; `reason` says why."""

    def __init__(self, reason: StopReason) -> None:
        super().__init__(reason)
        self.reason = reason


class Watchdog:
    """Deadlines for one attempt (`start(task)`, then `stop()`), read from its stream state."""

    def __init__(
        self,
        settings: Settings,
        deadline: float,
        state: StreamState,
        cancel_requested: Callable[[], Awaitable[bool]],
    ) -> None:
        self._first_token_timeout = settings.first_token_timeout
        self._idle_timeout = settings.idle_timeout
        self._deadline = deadline  # time.monotonic() when the whole job must end
        self._state = state
        self._cancel_requested = cancel_requested
        self.reason: StopReason | None = None
        self.busy = False  # the attempt is publishing: record a stop, let the attempt act on it after
        self._task: asyncio.Task[None] | None = None

    def start(self, target: asyncio.Task[Any]) -> None:
        self._task = asyncio.create_task(self._watch(target))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _limit(self, opened: float) -> tuple[float, StopReason]:
        state = self._state
        if state.first_token_at is None:
            limit, reason = opened + self._first_token_timeout, StopReason.FIRST_TOKEN_TIMEOUT
        else:
            limit, reason = state.last_chunk_at + self._idle_timeout, StopReason.IDLE_TIMEOUT
        return (self._deadline, StopReason.JOB_TIMEOUT) if self._deadline <= limit else (limit, reason)

    async def _watch(self, target: asyncio.Task[Any]) -> None:
        opened = time.monotonic()
        next_poll = opened + CANCEL_POLL_SECONDS
        while True:
            limit, reason = self._limit(opened)
            now = time.monotonic()
            if now >= limit:
                return self._interrupt(target, reason)
            if now >= next_poll:
                if await self._poll_cancel():
                    return self._interrupt(target, StopReason.CANCELLED)
                next_poll = time.monotonic() + CANCEL_POLL_SECONDS
            await asyncio.sleep(min(limit, next_poll) - now)

    async def _poll_cancel(self) -> bool:
        # A Redis hiccup must not end the watch: the deadlines still hold, and the next poll retries.
        try:  # bounded: a stalled Redis must not hold up the deadlines this task keeps
            async with asyncio.timeout(CANCEL_POLL_SECONDS):
                return await self._cancel_requested()
        except Exception as exc:
            log.warning("could not read the cancel flag: %s", exc)
            return False

    def _interrupt(self, target: asyncio.Task[Any], reason: StopReason) -> None:
        self.reason = reason
        if not self.busy:  # a publish cut in half would leave its items' fate unknown
            target.cancel()
