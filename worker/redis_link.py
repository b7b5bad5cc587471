"""The publisher's Redis client: every job of a process pipelined over one redis-py connection.

redis.asyncio checks a connection out of its pool for every call, holds it until the reply,
and wraps the read in a task of its own: ~75 µs of CPU per call, a connection per call in
flight, and a pool that fails the 101st (docs/PERFORMANCE.md, section 6). Here one connection
carries every call of every job, written as soon as it is made and answered in the order sent
(Redis answers one connection's commands in order), so a job never waits for a free
connection and calls made in the same turn of the event loop leave in one write.

Only the multiplexing is written here. The connection is redis-py's own, built from REDIS_URL
the way every part builds one (`rankstream.connections.client_options`): TLS and its `ssl_*`
options, unix sockets, AUTH with an ACL user, SELECT, the client name, the connect timeout and
the retry policy are redis-py's doing, and so are packing commands and parsing replies (hiredis
when installed). Errors are redis-py's classes:

- an error reply raises its ResponseError (or subclass) for its caller only; the connection
  goes on;
- a lost connection fails every call in flight with ConnectionError; the next call connects
  again;
- every call has a deadline, the connection's socket_timeout (RANKSTREAM_REDIS_TIMEOUT unless
  the URL sets one) from when it is sent (for a call made while connecting, from when the
  connection is ready: connecting has its own socket_connect_timeout). A call past it gets
  TimeoutError and the connection is dropped (calls still within theirs get ConnectionError),
  so a late reply can never reach the wrong caller. One timer keeps every deadline: the oldest
  call's is the earliest. A caller that stops waiting (cancelled) does not shift the order
  either: its reply is read and dropped;
- `execute` and `evalsha` retry ConnectionError and TimeoutError under the connection's own
  `retry` (redis-py's Retry: twice, jittered, with rankstream's options), as redis.asyncio
  does; `retrying` does the same for a caller's group of `send`s. Like redis-py, a retry sends
  the command again: fine for the job scripts and reads, which are idempotent.

A script is called by its SHA1 (EVALSHA); when Redis has lost it (NOSCRIPT: SCRIPT FLUSH, a
restart, a failover) the call loads it (SCRIPT LOAD) and is sent once more.

A link belongs to one event loop. Replies are RESP2 and bytes: the link asks redis-py for
RESP2, and refuses a URL that asks for RESP3 or decoded replies (as the settings do). redis-py's
health_check_interval is not used: the reader notices a closed connection at once, and a
half-open one fails the next call at its deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.exceptions import ConnectionError, NoScriptError, RedisError, ResponseError, TimeoutError
from redis.typing import EncodableT

from rankstream.connections import client_options

T = TypeVar("T")


class Script:
    """A Lua script, called by its SHA1 (EVALSHA) and loaded when Redis does not know it."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class RedisLink:
    """`await link.execute("HGET", key, field)`, `await link.evalsha(script, keys, args)`.

    `send(...)` and `send_script(...)` write a call and return its future at once: replies come
    back in the order the calls were sent, so a caller can keep several in flight (await them
    with `replies`). Nothing is sent before the first call; `aclose()` ends the connection.
    """

    def __init__(self, url: str, timeout: float, **options: Any) -> None:
        """`timeout`: RANKSTREAM_REDIS_TIMEOUT, for calls and connects, unless the URL sets its own.

        `options` go to redis-py's connection after rankstream's own (the URL's still win), e.g.
        `retry=Retry(NoBackoff(), 0)`.
        """
        # RESP2: redis-py 8 would say HELLO 3, and only its client (not a connection) turns RESP3
        # replies back into the shapes our code reads. The URL wins over these options, so a URL
        # that asks for RESP3 or decoded replies (the settings refuse both) is refused here too.
        given = {**client_options(url, timeout, for_asyncio=True), "protocol": 2, **options}
        self._pool = redis.asyncio.ConnectionPool.from_url(url, **given)
        first = self._new_connection()  # not connected: its settings, as every later one has them
        if first.protocol != 2 or first.encoder.decode_responses:
            raise ValueError(
                "RedisLink reads RESP2 replies as bytes: remove protocol and decode_responses from the URL"
            )
        self.timeout: float = first.socket_timeout or math.inf  # a call's deadline, seconds
        self.retry: Retry = first.retry
        self._session: _Session | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # the sessions' writers, readers and closers
        self._closed = False

    def _new_connection(self) -> AbstractConnection:
        connection: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        return connection

    # --- calls ------------------------------------------------------------------------------

    def send(self, *args: EncodableT) -> asyncio.Future[Any]:
        """Send a command without waiting for its reply; its future holds the reply.

        It is written as soon as this task yields, in one write with every other command sent
        in the same turn of the event loop (after connecting, if need be). No retry: a caller
        that wants one sends its group again under `retrying`.
        """
        session = self._session or self._open()
        return session.send(session.connection.pack_command(*args), None)

    def send_script(
        self, script: Script, keys: Sequence[EncodableT], args: Sequence[EncodableT]
    ) -> asyncio.Future[Any]:
        """EVALSHA now; on NOSCRIPT the link loads the script and sends the call once more."""
        session = self._session or self._open()
        packed = session.connection.pack_command("EVALSHA", script.sha, len(keys), *keys, *args)
        return session.send(packed, script)

    async def execute(self, *args: EncodableT) -> Any:
        """One command's reply, retried on a lost connection or a timeout as the retry policy says."""
        return await self.retry.call_with_retry(lambda: self._call(None, args), _nothing)

    async def evalsha(self, script: Script, keys: Sequence[EncodableT], args: Sequence[EncodableT]) -> Any:
        """EVALSHA's reply (loading the script on NOSCRIPT), retried as `execute` is."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        return await self.retry.call_with_retry(lambda: self._call(script, command), _nothing)

    async def _call(self, script: Script | None, command: tuple[EncodableT, ...]) -> Any:
        session = self._session or self._open()
        return await session.call(session.connection.pack_command(*command), script)

    async def ping(self) -> bool:
        return bool(await self.execute("PING") == b"PONG")

    async def retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call()` under the connection's retry policy (it is called again after ConnectionError or
        TimeoutError): for a group of `send`s that must be sent again together, in their order."""
        return await self.retry.call_with_retry(call, _nothing)

    @staticmethod
    async def replies(futures: Sequence[asyncio.Future[Any]]) -> list[Any]:
        """The replies of calls sent together, in order; on the first error the rest are let go."""
        try:
            return [await future for future in futures]
        except BaseException:
            for future in futures:
                if not future.done():
                    future.cancel()  # its reply will be read and dropped
                elif not future.cancelled():
                    future.exception()  # seen: no "exception never retrieved" at exit
            raise

    async def aclose(self) -> None:
        """Close the connection; calls in flight fail with ConnectionError, later calls too."""
        self._closed = True
        if self._session is not None:
            self._session.drop(ConnectionError("the Redis link was closed"))
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- sessions: one connection each --------------------------------------------------------

    def _open(self) -> _Session:
        if self._closed:
            raise ConnectionError("the Redis link is closed")
        self._session = _Session(self, self._new_connection())
        return self._session

    def _lost(self, session: _Session) -> None:
        if self._session is session:
            self._session = None

    def _track(self, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


async def _nothing(error: Exception) -> None:
    """redis-py's Retry calls this between tries; the link has already dropped the connection."""


class _Call:
    """A command written (or about to be) on a session, waiting for its reply."""

    __slots__ = ("deadline", "future", "load", "packed", "script")

    def __init__(
        self,
        future: asyncio.Future[Any],
        deadline: float,
        script: Script | None,
        packed: list[bytes] | None,
        load: asyncio.Future[Any] | None = None,
    ) -> None:
        self.future = future
        self.deadline = deadline  # loop time; set when the connection is ready
        self.script = script  # the script of an EVALSHA that may be sent again after NOSCRIPT
        self.packed = packed  # its bytes, to send again
        self.load = load  # for an EVALSHA sent again: the SCRIPT LOAD sent before it


class _Session:
    """One connection and its calls in the order sent. Once dropped, never used again."""

    def __init__(self, link: RedisLink, connection: AbstractConnection) -> None:
        self.link = link
        self.connection = connection
        self.loop = asyncio.get_running_loop()
        self.timeout = link.timeout
        self.pending: deque[_Call] = deque()  # sent (or queued to send), reply not read yet
        self.outbox: list[bytes] = []  # packed and not yet written
        self.ready = False  # connected: written calls have deadlines
        self.dead: BaseException | None = None
        self._wake: asyncio.Future[None] | None = None  # the writer waits on it for more to write
        self._timer: asyncio.TimerHandle | None = None
        self._reader: asyncio.Task[None] | None = None
        self._writer = link._track(self.loop.create_task(self._write(), name="redis-link-writer"))

    def send(self, packed: list[bytes], script: Script | None) -> asyncio.Future[Any]:
        """Queue the call for the writer (it writes everything queued in one turn at once)."""
        future = self._expect(packed, script)
        self._queue(packed)
        return future

    def _queue(self, packed: list[bytes]) -> None:
        self.outbox.extend(packed)
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set_result(None)

    async def call(self, packed: list[bytes], script: Script | None) -> Any:
        """The call's reply. Written here and now when the writer is idle (nothing queued before it,
        and a turn of the event loop saved), else queued behind what is."""
        if self._wake is None:  # connecting, or the writer has (or had) something to write
            return await self.send(packed, script)
        connection = self.connection
        future = self._expect(packed, script)
        if not connection.is_connected:
            self.drop(ConnectionError("lost the connection to Redis"))
        else:
            try:  # no timeout of redis-py's (none set): it writes at once, and waits only on a full buffer
                await connection.send_packed_command(packed, check_health=False)
            except asyncio.CancelledError:
                # Only a full write buffer makes it wait; redis-py closes the connection when that
                # wait is cut short, so the calls in flight fail (and are retried) with it.
                future.cancel()
                self.drop(ConnectionError("a write to Redis was interrupted"))
                raise
            except Exception as exc:
                self.drop(exc)
        return await future

    def _expect(self, packed: list[bytes], script: Script | None) -> asyncio.Future[Any]:
        """A future for the call's reply, in line with the others and with its deadline."""
        future = self.loop.create_future()
        if self.ready:
            deadline = self.loop.time() + self.timeout
            if self._timer is None and deadline < math.inf:
                self._timer = self.loop.call_at(deadline, self._check_deadline)
        else:
            deadline = math.inf  # set when connected
        self.pending.append(_Call(future, deadline, script, packed if script is not None else None))
        return future

    # --- the writer: connect, then write whatever the callers queued -----------------------------

    async def _write(self) -> None:
        connection = self.connection
        try:
            await connection.connect()  # type: ignore[no-untyped-call]  # TLS, AUTH, SELECT...: redis-py's
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.drop(exc)
            return
        # From here the deadlines of the calls are the link's (one timer for all, below):
        # redis-py's own would wrap every write in asyncio.wait_for, a task per write.
        connection.socket_timeout = None
        self.ready = True
        if self.pending and self.timeout < math.inf:
            deadline = self.loop.time() + self.timeout
            for call in self.pending:
                call.deadline = deadline
            self._timer = self.loop.call_at(deadline, self._check_deadline)
        self._reader = self.link._track(self.loop.create_task(self._read(), name="redis-link-reader"))
        while True:
            if not self.outbox:
                self._wake = self.loop.create_future()
                await self._wake
                continue
            data, self.outbox = self.outbox, []
            if not connection.is_connected:  # never let redis-py reconnect under calls in flight
                self.drop(ConnectionError("lost the connection to Redis"))
                return
            try:
                await connection.send_packed_command(data, check_health=False)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.drop(exc)
                return

    # --- the reader: every reply, in order, to its caller ------------------------------------------

    async def _read(self) -> None:
        read = self.connection.read_response
        pending = self.pending
        while True:
            try:
                reply = await read(timeout=math.inf)  # an idle wait is no timeout: deadlines are per call
            except ResponseError as exc:  # an error reply: its caller's alone
                if not pending:
                    self.drop(exc)
                    return
                self._refused(pending.popleft(), exc)
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # lost, closed, or a reply nobody can read: the connection is done
                self.drop(exc)
                return
            if not pending:
                self.drop(ConnectionError(f"Redis sent a reply nobody asked for: {reply!r:.100}"))
                return
            future = pending.popleft().future
            if not future.done():  # else its caller stopped waiting: the reply is dropped
                future.set_result(reply)

    def _refused(self, call: _Call, error: ResponseError) -> None:
        future = call.future
        if future.done():
            return
        if call.script is not None and isinstance(error, NoScriptError):
            self._reload(call)
            return
        # Sent again after a SCRIPT LOAD that failed (it does not compile, say): that is the answer.
        load = call.load
        loading = load.exception() if load is not None and load.done() and not load.cancelled() else None
        future.set_exception(loading or error)

    def _reload(self, call: _Call) -> None:
        """SCRIPT LOAD, then the same EVALSHA once more (behind it on the same connection)."""
        assert call.script is not None and call.packed is not None
        load = self.send(self.connection.pack_command("SCRIPT", "LOAD", call.script.source), None)
        load.add_done_callback(_seen)
        again = self.loop.time() + self.timeout
        self.pending.append(
            _Call(call.future, again, None, None, load)
        )  # no script: a second NOSCRIPT is final
        self._queue(call.packed)

    # --- deadlines and the end ---------------------------------------------------------------

    def _check_deadline(self) -> None:
        """The oldest call has the earliest deadline: past it, the connection is given up."""
        self._timer = None
        if self.dead is not None or not self.pending:
            return
        deadline = self.pending[0].deadline
        if deadline <= self.loop.time():
            self.drop(TimeoutError(f"no reply from Redis within {self.timeout:g}s"))
        else:
            self._timer = self.loop.call_at(deadline, self._check_deadline)

    def drop(self, error: BaseException) -> None:
        """Give the connection up: every call in flight fails, the next call opens another."""
        if self.dead is not None:
            return
        self.dead = error
        self.link._lost(self)
        if self._timer is not None:
            self._timer.cancel()
        timed_out = isinstance(error, TimeoutError) and self.ready
        now = self.loop.time()
        for call in self.pending:
            if not call.future.done():
                if timed_out and call.deadline <= now:
                    call.future.set_exception(TimeoutError(*error.args))
                elif timed_out:
                    call.future.set_exception(
                        ConnectionError(
                            f"connection to Redis dropped: a call before this one timed out ({error})"
                        )
                    )
                else:
                    call.future.set_exception(_lost(error))
        self.pending.clear()
        self.outbox.clear()
        current = asyncio.current_task()
        for task in (self._writer, self._reader):
            if task is not None and task is not current:
                task.cancel()
        self.link._track(self.loop.create_task(self._close()))

    async def _close(self) -> None:
        try:
            await self.connection.disconnect(nowait=True)
        except Exception:  # closing a broken connection: nothing more to do
            return


def _seen(future: asyncio.Future[Any]) -> None:
    """A future nobody awaits: its exception is looked at, so asyncio does not report it."""
    if not future.cancelled():
        future.exception()


def _lost(error: BaseException) -> RedisError:
    """What a caller gets for a lost connection: redis-py's ConnectionError (or its TimeoutError
    when connecting timed out), each caller its own instance."""
    if isinstance(error, ConnectionError | TimeoutError):
        try:
            failure: RedisError = type(error)(*error.args)
        except Exception:
            failure = ConnectionError(str(error))
    else:
        failure = ConnectionError(f"lost the connection to Redis: {type(error).__name__}: {error}")
    failure.__cause__ = error
    return failure
