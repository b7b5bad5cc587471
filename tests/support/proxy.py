"""A small real HTTP proxy for tests, recording every request it is sent.

It forwards absolute-form requests (`GET http://host:port/path HTTP/1.1`), tunnels CONNECT,
and answers an origin-form request (`GET /path`) itself with `200 origin`, so it can stand in
for a target server too. A TLS handshake sent straight to it is recorded as `TLS` and closed.
It runs its own event loop in a thread, so both async tests and child processes can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

import pytest

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUEST_METHOD")
CONNECT_TIMEOUT = 5.0


def clear_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy variables in either case (REQUEST_METHOD: urllib ignores HTTP_PROXY under CGI)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@dataclass(frozen=True)
class Seen:
    line: str  # the request line, e.g. "CONNECT localhost:443 HTTP/1.1"
    proxy_authorization: str | None = None


class RecordingProxy:
    """`with RecordingProxy() as proxy:` listening on 127.0.0.1:`proxy.port` until the block ends."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def lines(self) -> list[str]:
        return [seen.line for seen in self.seen]

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise AssertionError("the proxy did not start within 10s")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
        # asyncio.run cancels the connections still open (pooled keep-alives, tunnels)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._exchange(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away
        finally:
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.readexactly(1)
        if first == b"\x16":  # a TLS ClientHello: this is no TLS server
            self.seen.append(Seen("TLS"))
            return
        head = (first + await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        line, *header_lines = head.split("\r\n")[:-2]
        headers = [tuple(h.split(":", 1)) for h in header_lines]
        auth = next((v.strip() for k, v in headers if k.lower() == "proxy-authorization"), None)
        self.seen.append(Seen(line, auth))
        method, target, version = line.split(" ", 2)

        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream = await self._open(host.strip("[]"), int(port), writer)
            if upstream is not None:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await _pipe(reader, writer, *upstream)
        elif target.startswith("http://"):
            url = urlsplit(target)
            upstream = await self._open(url.hostname or "", url.port or 80, writer)
            if upstream is not None:
                path = (url.path or "/") + (f"?{url.query}" if url.query else "")
                hop_by_hop = ("connection", "proxy-connection", "proxy-authorization", "keep-alive")
                kept = "".join(f"{k}:{v}\r\n" for k, v in headers if k.lower() not in hop_by_hop)
                upstream[1].write(
                    f"{method} {path} {version}\r\n{kept}Connection: close\r\n\r\n".encode("latin-1")
                )
                await _pipe(reader, writer, *upstream)
        else:  # origin-form: the request is for this server
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\norigin")
            await writer.drain()

    async def _open(
        self, host: str, port: int, writer: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                return await asyncio.open_connection(host, port)
        except (OSError, TimeoutError):
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            return None


async def _pipe(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    upstream_reader: asyncio.StreamReader,
    upstream_writer: asyncio.StreamWriter,
) -> None:
    """Copy both ways until either side closes, then close both."""

    async def copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    tasks = [
        asyncio.create_task(copy(client_reader, upstream_writer)),
        asyncio.create_task(copy(upstream_reader, client_writer)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        upstream_writer.close()
