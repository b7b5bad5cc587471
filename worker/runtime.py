"""What one worker process shares between its jobs: an event loop, the LLM client, Redis.

Jobs spend seconds waiting on the LLM and milliseconds computing, so their I/O runs as
coroutines on one event loop in a background thread, with one HTTP connection pool and one
pipelined Redis connection (worker/redis_link.py, with the job scripts) for all of them. RQ's
thread hands each job's coroutine to this loop (worker/job.py) and waits for it.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from rankstream.exceptions import LLMNotConfigured
from rankstream.settings import Settings, get_settings

from .formats import FormatMemory
from .llm import LLMClient, make_client
from .publish import RedisScripts
from .redis_link import RedisLink

if TYPE_CHECKING:
    from .job import Running

T = TypeVar("T")


class Runtime:
    _current: ClassVar[Runtime | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, settings: Settings) -> None:
        if not settings.llm_configured:
            raise LLMNotConfigured()
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="rankstream-io", daemon=True)
        self._thread.start()
        self.llm: LLMClient = make_client(settings)
        self.llm_base_url = str(self.llm.sdk.base_url)
        self.formats = FormatMemory(settings.response_format)  # what each server accepts
        # Connects on first use, on self.loop (the worker's start check pings it).
        self.redis = RedisLink(settings.redis_address, settings.redis_timeout)
        self.scripts = RedisScripts(self.redis)
        self.started: dict[str, Running] = {}  # job id -> its coroutine, begun at dequeue

    @classmethod
    def current(cls) -> Runtime:
        """The process's runtime, made on first use (a plain `rq worker` works too)."""
        with cls._lock:
            if cls._current is None:
                cls._current = Runtime(get_settings())
            return cls._current

    @classmethod
    def install(cls, runtime: Runtime) -> None:
        with cls._lock:
            cls._current = runtime

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    @classmethod
    def _forget_after_fork(cls) -> None:
        # A forked child (RQ's forking Worker) has none of the parent's threads: its event loop
        # is gone, so the child must build a runtime of its own on first use.
        cls._current = None
        cls._lock = threading.Lock()

    def close(self) -> None:
        async def _close() -> None:
            await self.llm.close()
            await self.redis.aclose()

        if self.loop.is_running():
            self.submit(_close()).result(timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        with Runtime._lock:
            if Runtime._current is self:
                Runtime._current = None


os.register_at_fork(after_in_child=Runtime._forget_after_fork)
