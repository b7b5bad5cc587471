"""The baseline of section 6: a minimal hand-written asyncio Redis client, one pipelined connection, RESP2.

It was the worker's publisher client (worker/resp.py) until the publisher moved to
redis.asyncio with the hiredis parser (worker/publish.py); it is kept here, unchanged, so the
bench can say what that move costs (bench/redis_client.py, docs/PERFORMANCE.md). It does only
what the publisher needed: connect (TCP, TLS or unix socket; AUTH, SELECT), send commands, and
match replies to callers in order, so every job of a process shares one connection and
concurrent commands are pipelined for free. Not product code: nothing outside bench/ imports it.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from typing import Any

from redis.connection import parse_url

Reply = bytes | int | list["Reply"] | None

COMMAND_TIMEOUT = 10.0


class RespError(Exception):
    """Redis answered with an error reply."""


class RespConnectionError(ConnectionError):
    """The connection to Redis could not be made or was lost."""


class _Incomplete(Exception):
    pass


def encode_parts(args: tuple[Any, ...] | list[Any]) -> bytes:
    """The arguments of a command as RESP bulk strings, without the array header."""
    parts = []
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def encode(args: tuple[Any, ...] | list[Any]) -> bytes:
    return b"*%d\r\n" % len(args) + encode_parts(args)


def parse(buffer: bytes, pos: int) -> tuple[Reply | RespError, int]:
    """One reply from buffer[pos:]; raises _Incomplete if it has not all arrived."""
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line = buffer[pos : pos + 1], buffer[pos + 1 : end]
    pos = end + 2
    if kind == b"+":
        return line, pos
    if kind == b":":
        return int(line), pos
    if kind == b"-":
        return RespError(line.decode(errors="replace")), pos
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, pos
        if len(buffer) < pos + size + 2:
            raise _Incomplete
        return buffer[pos : pos + size], pos + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, pos
        items: list[Reply] = []
        for _ in range(count):
            item, pos = parse(buffer, pos)
            items.append(item if not isinstance(item, RespError) else None)
        return items, pos
    raise RespConnectionError(f"not a RESP reply: {buffer[pos - len(line) - 3 : pos]!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[Reply]] = deque()
        self._buffer = b""
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        pos = 0
        while pos < len(buffer):
            try:
                reply, pos_after = parse(buffer, pos)
            except _Incomplete:
                break
            except RespConnectionError as exc:
                self._fail_all(exc)
                if self.transport is not None:
                    self.transport.close()
                return
            pos = pos_after
            future = self.waiting.popleft()
            if future.done():  # its caller gave up (timeout, cancel); the reply is dropped
                continue
            if isinstance(reply, RespError):
                future.set_exception(reply)
            else:
                future.set_result(reply)
        self._buffer = buffer[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or RespConnectionError("connection closed by Redis")
        self._fail_all(RespConnectionError(f"lost the connection to Redis: {self.lost}"))

    def _fail_all(self, exc: BaseException) -> None:
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(exc)


class Script:
    """A Lua script, called by its SHA1 and loaded on first NOSCRIPT."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def bind(self, keys: list[str]) -> BoundScript:
        return BoundScript(self, keys)


class BoundScript:
    """A script with its keys, encoded once: a job calls the same script on the same keys often."""

    def __init__(self, script: Script, keys: list[str]) -> None:
        self.script = script
        self.keys = keys
        self.count = 3 + len(keys)
        self.head = encode_parts(("EVALSHA", script.sha, len(keys), *keys))


class Sent:
    """A script call already written to Redis; `await sent.result()` for its reply."""

    def __init__(
        self, client: RespClient, bound: BoundScript, args: list[Any], future: asyncio.Future[Reply]
    ):
        self._client = client
        self._bound = bound
        self._args = args
        self._future = future

    async def result(self) -> Reply:
        try:
            return await self._future
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):  # else: Redis lost its scripts (SCRIPT FLUSH)
                raise
        return await self._client.evalsha(self._bound, self._args)


class RespClient:
    """`await client.execute("HGET", key, field)`; `await client.evalsha(bound_script, args)`.

    `send(bound_script, args)` writes a call without waiting for its reply: replies come back
    in the order the calls were sent, so a caller can keep several in flight and still know
    their order. Scripts given here are loaded on every (re)connect.
    """

    def __init__(self, url: str, scripts: tuple[Script, ...] = ()) -> None:
        self._options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        self._scripts = scripts
        self._protocol: _Protocol | None = None
        self._connecting = asyncio.Lock()

    def send(self, bound: BoundScript, args: list[Any]) -> Sent:
        """Write the call now. Needs a live connection (any awaited call makes one)."""
        protocol = self._protocol
        if protocol is None or protocol.lost is not None or protocol.transport is None:
            raise RespConnectionError("not connected to Redis")
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        protocol.waiting.append(future)
        protocol.transport.write(b"*%d\r\n%s%s" % (bound.count + len(args), bound.head, encode_parts(args)))
        return Sent(self, bound, args, future)

    async def execute(self, *args: Any) -> Reply:
        return await self._send(await self._connected(), encode(args))

    async def evalsha(self, bound: BoundScript, args: list[Any]) -> Reply:
        payload = b"*%d\r\n%s%s" % (bound.count + len(args), bound.head, encode_parts(args))
        try:
            return await self._send(await self._connected(), payload)
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self.execute("SCRIPT", "LOAD", bound.script.source)
        return await self._send(await self._connected(), payload)

    async def _connected(self) -> _Protocol:
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            protocol = await self._connect()
        return protocol

    async def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None

    async def _send(self, protocol: _Protocol, payload: bytes) -> Reply:
        assert protocol.transport is not None
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        protocol.waiting.append(future)
        protocol.transport.write(payload)
        async with asyncio.timeout(COMMAND_TIMEOUT):
            return await future

    async def _connect(self) -> _Protocol:
        async with self._connecting:
            if self._protocol is not None and self._protocol.lost is None:
                return self._protocol
            protocol = await self._open()
            if self._options.get("password"):
                credentials = [self._options.get("username"), self._options["password"]]
                await self._send(protocol, encode(("AUTH", *(c for c in credentials if c))))
            if self._options.get("db"):
                await self._send(protocol, encode(("SELECT", self._options["db"])))
            for script in self._scripts:
                await self._send(protocol, encode(("SCRIPT", "LOAD", script.source)))
            self._protocol = protocol
            return protocol

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        options = self._options
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                if "path" in options:
                    _, protocol = await loop.create_unix_connection(_Protocol, options["path"])
                    return protocol
                tls = (
                    _tls_context(options)
                    if options.get("connection_class", type).__name__ == "SSLConnection"
                    else None
                )
                _, protocol = await loop.create_connection(
                    _Protocol, options.get("host", "127.0.0.1"), options.get("port", 6379), ssl=tls
                )
                return protocol
        except (OSError, TimeoutError) as exc:
            raise RespConnectionError(f"cannot connect to Redis: {exc}") from exc


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if str(options.get("ssl_cert_reqs", "required")).lower() in ("none", "cert_none"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
