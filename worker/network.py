"""The LLM client's sockets, on asyncio's own transports instead of anyio's streams.

The `openai` client talks HTTP through httpx2 and httpcore2, whose default network layer is
anyio. Measured on the target machine (docs/PERFORMANCE.md), reading a paced SSE stream's
bytes through that stack costs about 178 µs of CPU per chunk, against 66 µs for a bare
asyncio socket; about 40 µs of it is anyio's. httpcore2 lets a network backend be swapped in:
this one keeps HTTP/1.1, pooling, keep-alive, TLS, proxies and timeouts where they are
(httpcore2, the ssl module) and only replaces the socket reads and writes with an asyncio
Protocol. worker/transport.py hands it to httpcore2 through public constructors.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore2
import httpx2

from .transport import BackendTransport, environment_proxies

SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]

HIGH_WATER = 1 << 20  # stop reading from the socket while this much is unread


class SocketReader(asyncio.Protocol):
    """Buffers what arrives; one reader at a time waits on it (also worker/http_stream.py's)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._drained: asyncio.Future[None] | None = None
        self._write_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > HIGH_WATER and self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait_readable(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def drain(self) -> None:
        if self._write_paused:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    def take(self, max_bytes: int) -> bytes:
        data = bytes(self.buffer[:max_bytes])
        del self.buffer[:max_bytes]
        if self._paused and len(self.buffer) <= HIGH_WATER // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data


class AsyncioStream(httpcore2.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, reader: SocketReader) -> None:
        self._transport = transport
        self._reader = reader

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        reader = self._reader
        if not reader.buffer and not reader.eof:
            try:
                async with asyncio.timeout(timeout):
                    while not reader.buffer and not reader.eof:
                        await reader.wait_readable()
            except TimeoutError as exc:
                raise httpcore2.ReadTimeout(str(exc) or "read timed out") from exc
        if reader.buffer:
            return reader.take(max_bytes)
        if reader.error is not None:
            raise httpcore2.ReadError(str(reader.error)) from reader.error
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._transport.is_closing():
            raise httpcore2.WriteError("the connection is closed")
        self._transport.write(buffer)
        try:
            async with asyncio.timeout(timeout):
                await self._reader.drain()
        except TimeoutError as exc:
            raise httpcore2.WriteTimeout(str(exc) or "write timed out") from exc

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore2.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport, self._reader, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError as exc:
            self._transport.close()
            raise httpcore2.ConnectTimeout(str(exc) or "TLS handshake timed out") from exc
        except (OSError, ssl.SSLError) as exc:
            self._transport.close()
            raise httpcore2.ConnectError(str(exc)) from exc
        assert isinstance(transport, asyncio.Transport)
        self._reader.transport = transport
        return AsyncioStream(transport, self._reader)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # an idle pooled connection the server has closed (or spoken on)
            return bool(self._reader.buffer) or self._reader.eof
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        return self._transport.get_extra_info(info)  # "ssl_object" and "socket" are asyncio's names too


class AsyncioBackend(httpcore2.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        try:
            async with asyncio.timeout(timeout):
                transport, reader = await loop.create_connection(SocketReader, host, port, local_addr=local)
        except TimeoutError as exc:
            raise httpcore2.ConnectTimeout(str(exc) or "connect timed out") from exc
        except OSError as exc:
            raise httpcore2.ConnectError(str(exc)) from exc
        sock = transport.get_extra_info("socket")
        for option in socket_options or ():
            with contextlib.suppress(OSError):
                sock.setsockopt(*option)
        return AsyncioStream(transport, reader)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[SocketOption] | None = None
    ) -> httpcore2.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, reader = await loop.create_unix_connection(SocketReader, path)
        except TimeoutError as exc:
            raise httpcore2.ConnectTimeout(str(exc) or "connect timed out") from exc
        except OSError as exc:
            raise httpcore2.ConnectError(str(exc)) from exc
        return AsyncioStream(transport, reader)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


# The openai SDK's own pool limits (openai._constants.DEFAULT_CONNECTION_LIMITS).
LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=100)


def limits_for(streams: int) -> httpx2.Limits:
    """The SDK's limits, widened so that `streams` live streams never wait for a connection
    and each keeps its connection alive for the next job."""
    return httpx2.Limits(
        max_connections=max(LIMITS.max_connections or 0, streams),
        max_keepalive_connections=max(LIMITS.max_keepalive_connections or 0, streams),
    )


def http_client(
    timeout: httpx2.Timeout, verify: ssl.SSLContext | bool = True, limits: httpx2.Limits = LIMITS
) -> httpx2.AsyncClient:
    """An httpx2 client like the openai SDK's default one, on the asyncio network backend.

    Like that client, it reads HTTP(S)_PROXY, ALL_PROXY and NO_PROXY when it is made, and
    mounts a transport per proxy: a client given `transport=` would otherwise ignore them.
    """
    backend = AsyncioBackend()

    def transport(proxy: str | None = None) -> BackendTransport:
        return BackendTransport(
            backend, verify=verify, limits=limits, proxy=None if proxy is None else httpx2.Proxy(proxy)
        )

    # None: the pattern is a NO_PROXY entry, and goes to `transport=` (direct).
    mounts = {
        pattern: None if url is None else transport(url) for pattern, url in environment_proxies().items()
    }
    return httpx2.AsyncClient(transport=transport(), mounts=mounts, timeout=timeout, follow_redirects=True)
