"""Redis clients from REDIS_URL: made once per process, the same way for every part.

Every part (producer, worker, gateway, RQ itself) connects through redis-py's `from_url`, so a
URL means the same everywhere: `redis://`, `rediss://` with its `ssl_*` options, user and
password, db, `unix://`, and redis-py's query options (`socket_timeout=...`). A form redis-py
cannot serve (`redis+sentinel://`, a misspelt option) is refused when settings are read,
never half-served later. Unless the URL sets them, calls and connects time out after
RANKSTREAM_REDIS_TIMEOUT, so a half-open connection cannot stall a caller for ever.
"""

from __future__ import annotations

import asyncio
import re
import threading
import weakref
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

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
    """Raise RedisURLError unless redis-py can build a connection from `url` (nothing is sent)."""
    if url.split("://", 1)[0].endswith("sentinel"):
        raise RedisURLError(
            f"{url.split('://', 1)[0]}:// is not supported; give the master's redis:// or rediss:// URL "
            "(or a proxy in front of Sentinel)"
        )
    try:
        redis.ConnectionPool.from_url(url).make_connection()
    except ValueError as exc:
        raise RedisURLError(str(exc)) from None
    except TypeError as exc:  # an option no redis-py connection takes
        unknown = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
        raise RedisURLError(f"unknown option {unknown.group(1) if unknown else exc!s} in the URL") from None


def redacted(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


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
_async_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, float], redis.asyncio.Redis]
]
_async_clients = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def sync_client(url: str, timeout: float) -> redis.Redis:
    """The process's client for `url`; its pool reconnects by itself in a forked child."""
    key = (url, timeout)
    with _lock:
        client = _sync_clients.get(key)
        if client is None:
            client = _sync_clients[key] = redis.Redis.from_url(url, **client_options(url, timeout))
        return client


def async_client(url: str, timeout: float) -> redis.asyncio.Redis:
    """The running event loop's client for `url` (an asyncio client belongs to one loop)."""
    loop = asyncio.get_running_loop()
    clients = _async_clients.setdefault(loop, {})
    key = (url, timeout)
    client = clients.get(key)
    if client is None:
        client = clients[key] = redis.asyncio.Redis.from_url(
            url, **client_options(url, timeout, for_asyncio=True)
        )
    return client


def connect(settings: Settings) -> redis.Redis:
    """The process's synchronous client for REDIS_URL."""
    return sync_client(settings.redis_address, settings.redis_timeout)


def aconnect(settings: Settings) -> redis.asyncio.Redis:
    """The running loop's asyncio client for REDIS_URL."""
    return async_client(settings.redis_address, settings.redis_timeout)
