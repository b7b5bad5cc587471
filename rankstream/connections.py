"""Redis clients from REDIS_URL: made once per process, the same way for every part.

Every part (producer, worker, gateway, RQ itself) connects through redis-py's `from_url`, so a
URL means the same everywhere: `redis://`, `rediss://` with its `ssl_*` options, user and
password, db, `unix://`, and redis-py's query options (`socket_timeout=...`). A form redis-py
cannot serve (`redis+sentinel://`, a misspelt option), or whose replies our code cannot read
(`decode_responses`, `protocol=3`), is refused when settings are read, never half-served
later. Unless the URL sets them, calls and connects time out after RANKSTREAM_REDIS_TIMEOUT,
so a half-open connection cannot stall a caller for ever.
"""

from __future__ import annotations

import asyncio
import re
import threading
import weakref
from collections.abc import AsyncGenerator, Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.connection import parse_url
from redis.retry import Retry

if TYPE_CHECKING:
    from .settings import Settings


class RedisURLError(ValueError):
    """REDIS_URL names a form that redis-py (and so rankstream) cannot connect to."""


def check_redis_url(url: str) -> None:
    """Raise RedisURLError unless rankstream can serve `url` (nothing is sent).

    That is: redis-py can build a connection from it, and its replies keep the shapes our code
    reads (bytes, RESP2 shapes).
    """
    if url.split("://", 1)[0].endswith("sentinel"):
        raise RedisURLError(
            f"{url.split('://', 1)[0]}:// is not supported; give the master's redis:// or rediss:// URL "
            "(or a proxy in front of Sentinel)"
        )
    try:
        _check_reply_options(parse_url(url))  # type: ignore[no-untyped-call]
        redis.ConnectionPool.from_url(url).make_connection()
    except ValueError as exc:
        raise RedisURLError(str(exc)) from None
    except TypeError as exc:  # an option no redis-py connection takes
        unknown = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
        raise RedisURLError(f"unknown option {unknown.group(1) if unknown else exc!s} in the URL") from None


def _check_reply_options(given: dict[str, Any]) -> None:
    """Refuse the options that change what replies look like: every part reads bytes in RESP2 shapes.

    redis-py accepts them, and a worker would then fail on its first job (or a reader on its
    first event) instead of at start.
    """
    if "decode_responses" in given:  # whatever its value: redis-py reads even "false" as true
        raise RedisURLError(
            "the option decode_responses is not supported: rankstream reads Redis replies as bytes; "
            "remove it from the URL"
        )
    if given.get("protocol", 2) != 2:
        raise RedisURLError(
            f"the option protocol={given['protocol']} is not supported: RESP3 changes the shape of "
            "replies (XREAD answers with a map); remove it from the URL or give protocol=2"
        )
    if given.get("legacy_responses") is False:
        raise RedisURLError(
            "the option legacy_responses=false is not supported: it changes the shape of replies "
            "(XREAD answers with a map); remove it from the URL"
        )


def redacted(url: str) -> str:
    """The URL with its password hidden, for messages and logs: in the user part and in the query."""
    password = urlsplit(url).password
    if password is not None:
        url = url.replace(f":{password}@", ":***@", 1)
    return _QUERY_PASSWORD.sub(r"\1***", url)


_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*")


def client_options(url: str, timeout: float, *, for_asyncio: bool = False) -> dict[str, Any]:
    """Keyword arguments for `from_url`: our timeouts and retries, unless the URL sets its own.

    A lost reply is retried twice at once (the job scripts are idempotent); a longer outage
    reaches the caller within seconds, not after redis-py's default ten retries, so a job's own
    retry policy can act with its deadline in view.
    """
    given = parse_url(url)  # type: ignore[no-untyped-call]
    retry = AsyncRetry if for_asyncio else Retry
    options: dict[str, Any] = {"retry": retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=2)}
    if "socket_timeout" not in given:
        options["socket_timeout"] = timeout
    if "socket_connect_timeout" not in given:
        options["socket_connect_timeout"] = timeout
    return options


_sync_clients: dict[tuple[str, float], redis.Redis] = {}
_lock = threading.Lock()


def sync_client(url: str, timeout: float) -> redis.Redis:
    """The process's client for `url`; its pool reconnects by itself in a forked child."""
    key = (url, timeout)
    with _lock:
        client = _sync_clients.get(key)
        if client is None:
            client = _sync_clients[key] = redis.Redis.from_url(url, **client_options(url, timeout))
        return client


class _LoopClients:
    """One event loop's asyncio clients, closed while that loop shuts down.

    A client holds its loop (through its connections), so a cache keyed weakly by loop would
    keep every loop, and its open connections, for ever. A loop's runner (asyncio.run, or any
    that calls `shutdown_asyncgens`) closes every async generator the loop has seen; `_closer`
    is one started here only for that: its `finally` closes the clients while the loop can
    still run it. A loop closed without that is dropped on the next access instead.
    """

    def __init__(self) -> None:
        self.clients: dict[tuple[str, float], redis.asyncio.Redis] = {}
        self._abandoned = False
        self._closer = self._close_at_shutdown()
        _step(self._closer.asend(None))  # its first step registers it with the running loop

    async def _close_at_shutdown(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            if not self._abandoned:
                _forget(asyncio.get_running_loop(), self)
                await asyncio.gather(*(c.aclose() for c in self.clients.values()), return_exceptions=True)

    def abandon(self) -> None:
        """Let go of a closed loop's clients: nothing can run on it, so their sockets go with the garbage."""
        self._abandoned = True
        _step(self._closer.aclose())  # so the loop's finalizer hook is never called on a closed loop


def _step(step: Coroutine[Any, Any, Any]) -> None:
    """Run one step of an async generator that awaits nothing, here and now."""
    try:
        step.send(None)
    except StopIteration:
        return
    raise RuntimeError("an async generator step awaited")  # never: those steps await nothing


_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients]
_async_clients = weakref.WeakKeyDictionary()


def _forget(loop: asyncio.AbstractEventLoop, entry: _LoopClients) -> None:
    with _lock:
        if _async_clients.get(loop) is entry:
            del _async_clients[loop]


def _forget_closed_loops() -> None:
    """Drop the clients of loops that closed without shutting down their async generators."""
    for loop in [loop for loop in _async_clients if loop.is_closed()]:
        _async_clients.pop(loop).abandon()


def async_client(url: str, timeout: float) -> redis.asyncio.Redis:
    """The running event loop's client for `url` (an asyncio client belongs to one loop)."""
    loop = asyncio.get_running_loop()
    key = (url, timeout)
    with _lock:
        _forget_closed_loops()
        entry = _async_clients.get(loop)
        if entry is None:
            entry = _async_clients[loop] = _LoopClients()
        client = entry.clients.get(key)
        if client is None:
            client = entry.clients[key] = redis.asyncio.Redis.from_url(
                url, **client_options(url, timeout, for_asyncio=True)
            )
        return client


def bounded_async_client(url: str, timeout: float, max_connections: int) -> redis.asyncio.Redis:
    """An asyncio client of its own whose pool never holds more than `max_connections`: a call
    beyond them waits (up to `timeout`) for one to come free. The caller closes it."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        **client_options(url, timeout, for_asyncio=True),
    )
    return redis.asyncio.Redis(connection_pool=pool)


def connect(settings: Settings) -> redis.Redis:
    """The process's synchronous client for REDIS_URL."""
    return sync_client(settings.redis_address, settings.redis_timeout)


def aconnect(settings: Settings) -> redis.asyncio.Redis:
    """The running loop's asyncio client for REDIS_URL."""
    return async_client(settings.redis_address, settings.redis_timeout)
