"""The streamed POST to the LLM, on asyncio's transports: pooled HTTP/1.1 connections, TLS, proxies.

Everything a request carries is decided once per process by the openai client itself
(worker/llm.py captures the URL and headers it would send), and the route by httpx2's
environment proxies (worker/transport.py): this module only moves the bytes. It serves a
direct connection (http or https) and an `http://` proxy (absolute-form requests for http
targets, a CONNECT tunnel for https ones); every other route stays on the openai client's
own HTTP stack. Errors are the openai client's: `APIConnectionError`, `APITimeoutError`, and
the status errors it makes from a response.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx2
import openai

from .http_wire import Body, Head, ProtocolError, parse_head
from .network import SocketReader

KEEPALIVE_SECONDS = 5.0  # httpx2's keepalive_expiry: servers close idle connections soon after
MAX_ERROR_BODY = 64 * 1024
DRAIN_SECONDS = 1.0  # how long the end of an answered body may take to arrive, in the background


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str  # as the socket layer takes it (IDNA-encoded, no brackets)
    port: int
    tls: bool

    @classmethod
    def of(cls, url: httpx2.URL) -> Endpoint:
        tls = url.scheme == "https"
        return cls(url.raw_host.decode("ascii"), url.port or (443 if tls else 80), tls)


@dataclass(frozen=True, slots=True)
class Route:
    """How requests reach the server: straight, or through an http:// proxy."""

    target: Endpoint
    proxy: Endpoint | None = None
    proxy_authorization: bytes | None = None

    @property
    def tunnel(self) -> bool:
        return self.proxy is not None and self.target.tls

    @classmethod
    def through(cls, url: httpx2.URL, proxy: httpx2.Proxy | None) -> Route:
        if proxy is None:
            return cls(Endpoint.of(url))
        auth = None
        if proxy.raw_auth is not None:
            user, password = proxy.raw_auth
            auth = b"Basic " + base64.b64encode(user + b":" + password)
        return cls(Endpoint.of(url), Endpoint.of(proxy.url), auth)


class _Connection(SocketReader):
    """One pooled socket: worker/network.py's buffering Protocol, read whole, and its idle time."""

    idle_since = 0.0

    async def receive(self, timeout: float | None) -> bytes:
        """What has arrived, waiting for some if nothing has; b"" once the connection is closed."""
        if not self.buffer and not self.eof:
            async with asyncio.timeout(timeout):
                await self.wait_readable()
        return self.take(len(self.buffer))

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        self.transport.write(data)

    def close(self) -> None:
        self.eof = True
        if self.transport is not None:
            self.transport.close()

    @property
    def usable(self) -> bool:
        """An idle pooled connection may carry a request: open, quiet, not kept past the expiry."""
        fresh = time.monotonic() - self.idle_since < KEEPALIVE_SECONDS
        return fresh and not self.eof and not self.buffer


class Response:
    """A response whose head has arrived; its body is read with `aiter_bytes`, then `release`."""

    def __init__(self, head: Head, body: Body, rest: bytes, conn: _Connection, stream: StreamingPost) -> None:
        self.head = head
        self._body = body
        self._rest = rest  # body bytes that came with the head
        self._conn = conn
        self._stream = stream

    @property
    def status(self) -> int:
        return self.head.status

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body's payload as it arrives, in the pieces the socket delivers it."""
        body, conn, timeout = self._body, self._conn, self._stream.read_timeout
        data, self._rest = self._rest, b""
        try:
            while True:
                if data:
                    payload = body.feed(data)
                    if payload:
                        yield payload
                if body.done:
                    return
                data = await conn.receive(timeout)
                if not data and conn.eof:
                    payload = body.end_of_input()
                    if payload:
                        yield payload
                    return
        except TimeoutError:
            raise openai.APITimeoutError(request=self._stream.request) from None
        except (OSError, ProtocolError) as exc:  # ssl.SSLError is an OSError
            raise self._stream.connection_error(exc) from exc

    async def read(self) -> bytes:
        """The whole body, up to MAX_ERROR_BODY (an error's explanation)."""
        parts: list[bytes] = []
        size = 0
        async for part in self.aiter_bytes():
            parts.append(part)
            size += len(part)
            if size >= MAX_ERROR_BODY:
                break
        return b"".join(parts)[:MAX_ERROR_BODY]

    def release(self, drain: bool = False) -> None:
        """Back to the pool if the body was read to its end on a reusable connection; else closed.

        `drain`: the caller has all it wanted (the answer is complete) but the body has not ended
        yet; read the rest in the background, briefly, and keep the connection if it then can be.
        """
        if self._reusable_now():
            self._stream.keep(self._conn)
        elif drain and not self._conn.eof and self._body.reusable:
            self._stream.drain_later(self)
        else:
            self._conn.close()

    def _reusable_now(self) -> bool:
        return self._body.done and self._body.reusable and not self._rest and not self._conn.buffer

    async def drain(self) -> None:
        size = 0
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                async for part in self.aiter_bytes():
                    size += len(part)
                    if size > MAX_ERROR_BODY:
                        break
        except (TimeoutError, openai.APIConnectionError):
            pass
        if self._reusable_now():
            self._stream.keep(self._conn)
        else:
            self._conn.close()


class StreamingPost:
    """POSTs to one URL with fixed headers, each answered with a streamed body."""

    def __init__(
        self,
        url: httpx2.URL,
        headers: list[tuple[bytes, bytes]],
        route: Route,
        ssl_context: ssl.SSLContext | None,
        timeout: httpx2.Timeout,
    ) -> None:
        self.url = url
        self.route = route
        self.request = httpx2.Request("POST", url)  # what the openai errors name
        self.connect_timeout = timeout.connect
        self.read_timeout = timeout.read
        self._ssl = ssl_context
        target = url.raw_path or b"/"
        if route.proxy is not None and not route.tunnel:  # a forwarding proxy takes the absolute form
            target = url.raw_scheme + b"://" + url.netloc + target
        lines = [b"POST " + target + b" HTTP/1.1", b"Host: " + url.netloc]
        lines += [name + b": " + value for name, value in headers]
        if route.proxy_authorization is not None and not route.tunnel:
            lines.append(b"Proxy-Authorization: " + route.proxy_authorization)
        self._head = b"\r\n".join(lines) + b"\r\nContent-Length: "
        self._idle: list[_Connection] = []
        self._draining: set[asyncio.Task[None]] = set()

    async def post(self, body: bytes) -> Response:
        """Send `body`; the response once its head has arrived (any status)."""
        request = self._head + str(len(body)).encode() + b"\r\n\r\n" + body
        while self._idle:
            conn = self._idle.pop()
            if not conn.usable:
                conn.close()
                continue
            try:
                return await self._exchange(conn, request)
            except _Stale:
                continue  # the server had closed it as we reused it: nothing was answered
        return await self._exchange(await self._connect(), request, fresh=True)

    def keep(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def drain_later(self, response: Response) -> None:
        task = asyncio.ensure_future(response.drain())
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def aclose(self) -> None:
        for task in list(self._draining):
            task.cancel()
        while self._idle:
            self._idle.pop().close()

    def connection_error(self, exc: BaseException) -> openai.APIConnectionError:
        return openai.APIConnectionError(message=f"{type(exc).__name__}: {exc}", request=self.request)

    async def _exchange(self, conn: _Connection, request: bytes, fresh: bool = False) -> Response:
        buffer = b""
        try:
            conn.write(request)
            while True:
                data = await conn.receive(self.read_timeout)
                if not data:
                    if not buffer and not fresh:
                        raise _Stale
                    raise ProtocolError("the server closed the connection without answering")
                buffer += data
                parsed = parse_head(buffer)
                if parsed is None:
                    continue
                head, size = parsed
                buffer = buffer[size:]
                if 100 <= head.status < 200 and head.status != 101:
                    continue  # an interim answer (100 Continue, 103 Early Hints): the real one follows
                if head.status == 101:
                    raise ProtocolError("the server switched protocols")
                return Response(head, Body(head), buffer, conn, self)
        except _Stale:
            conn.close()
            raise
        except TimeoutError:
            conn.close()
            raise openai.APITimeoutError(request=self.request) from None
        except (OSError, ProtocolError) as exc:  # ssl.SSLError is an OSError
            conn.close()
            if not fresh and not buffer and isinstance(exc, ConnectionError):
                raise _Stale from exc
            raise self.connection_error(exc) from exc
        except BaseException:  # cancelled mid-exchange: the connection's state is unknown
            conn.close()
            raise

    async def _connect(self) -> _Connection:
        route = self.route
        first = route.proxy or route.target
        loop = asyncio.get_running_loop()
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                direct_tls = first.tls and route.proxy is None
                _, conn = await loop.create_connection(
                    _Connection,
                    first.host,
                    first.port,
                    ssl=self._ssl if direct_tls else None,
                    server_hostname=first.host if direct_tls else None,
                )
                if route.tunnel:
                    await self._open_tunnel(conn, loop)
            return conn
        except TimeoutError:
            if conn is not None:
                conn.close()
            raise openai.APITimeoutError(request=self.request) from None
        except (OSError, ProtocolError) as exc:  # ssl.SSLError is an OSError
            if conn is not None:
                conn.close()
            raise self.connection_error(exc) from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise

    async def _open_tunnel(self, conn: _Connection, loop: asyncio.AbstractEventLoop) -> None:
        target = self.route.target
        authority = f"{_bracketed(target.host)}:{target.port}".encode()
        lines = [b"CONNECT " + authority + b" HTTP/1.1", b"Host: " + authority]
        if self.route.proxy_authorization is not None:
            lines.append(b"Proxy-Authorization: " + self.route.proxy_authorization)
        conn.write(b"\r\n".join(lines) + b"\r\n\r\n")
        buffer = b""
        while (parsed := parse_head(buffer)) is None:
            data = await conn.receive(None)
            if not data:
                raise ProtocolError("the proxy closed the connection during CONNECT")
            buffer += data
        head, size = parsed
        if not 200 <= head.status < 300:
            raise ProtocolError(
                f"the proxy refused CONNECT {authority.decode()}: {head.status} {head.reason}"
            )
        if buffer[size:]:
            raise ProtocolError("the proxy sent bytes before the tunnel was open")
        assert conn.transport is not None
        transport = await loop.start_tls(
            conn.transport, conn, self._ssl or ssl.create_default_context(), server_hostname=target.host
        )
        assert isinstance(transport, asyncio.Transport)
        conn.transport = transport


class _Stale(Exception):
    """A pooled connection failed before any answer: try the request on another."""


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
