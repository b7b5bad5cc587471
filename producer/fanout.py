"""Many subscribers, few Redis connections: one blocking read per process for every live stream.

A gateway may hold hundreds of subscribers, each following a job's stream. One blocked XREAD
per subscriber would take a Redis connection each; instead `StreamHub` runs one reader task
whose XREAD BLOCK names every stream someone follows (and a wake-up stream of its own, so a
new subscriber is read at once), and hands each entry to every subscriber of its stream.

A subscriber joins at any position (`after`, an entry id): it takes its share of the hub's
feed from the moment it joins, reads what lies between its position and the feed's with one
XRANGE, and never sees an entry twice or misses one (entries are filtered by id).

A job's keys carry its id as a hash tag, so one job's steps run on Redis Cluster; one XREAD
over many jobs' streams does not (they hash to different slots). The gateway serves a single
Redis (or a replicated one); on a cluster it would need one reader per slot, not written yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio

from rankstream import keys

log = logging.getLogger("rankstream.gateway")

Entry = tuple[str, dict[bytes, bytes]]
COUNT = 512  # entries per stream per read
RETRY_SECONDS = 0.5  # after a failed read
WAKE_TTL = 600  # seconds the wake-up stream outlives its last use


def entry_key(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


@dataclass
class _Feed:
    """One stream the hub reads: where it has read to, and who follows it."""

    last_id: str
    subscribers: set[Subscription] = field(default_factory=set)


class StreamHub:
    """One per process and event loop: `subscribe(stream, after)` yields that stream's entries."""

    def __init__(self, reader: redis.asyncio.Redis, commands: redis.asyncio.Redis, block_ms: int) -> None:
        """`reader`: a client for the blocking read alone; `commands`: one for the short calls."""
        self._reader_client = reader
        self._redis = commands
        self._block_ms = block_ms
        self._feeds: dict[str, _Feed] = {}
        self._wake_key = f"{keys.PREFIX}:gateway:{uuid.uuid4().hex}:wake"
        self._wake_id = "0-0"
        self._reader: asyncio.Task[None] | None = None
        self.reads = 0  # XREAD calls made: what the bench and tests watch

    @property
    def streams(self) -> int:
        return len(self._feeds)

    @property
    def subscribers(self) -> int:
        return sum(len(feed.subscribers) for feed in self._feeds.values())

    def subscribe(self, stream: str, after: str = "0-0") -> Subscription:
        """`async with hub.subscribe(stream, after) as sub:` then `await sub.next(timeout)`."""
        return Subscription(self, stream, after)

    def _join(self, stream: str, after: str, subscription: Subscription) -> tuple[_Feed, str]:
        """Add a subscriber; returns its feed and the position the feed had read to."""
        feed = self._feeds.get(stream)
        if feed is None:
            feed = self._feeds[stream] = _Feed(after)
        feed.subscribers.add(subscription)
        return feed, feed.last_id

    def _leave(self, stream: str, feed: _Feed, subscription: Subscription) -> None:
        feed.subscribers.discard(subscription)
        if not feed.subscribers and self._feeds.get(stream) is feed:
            del self._feeds[stream]

    async def aclose(self) -> None:
        """Stop reading. The wake-up stream is left to expire (the gateway's ACL user may not DEL)."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _wake(self) -> None:
        """Make the reader take up the current set of streams now, not when its block ends."""
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(), name="rankstream-hub")
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xadd(self._wake_key, {"w": "1"}, maxlen=16, approximate=True)
            pipe.expire(self._wake_key, WAKE_TTL)
            await pipe.execute()

    async def _read(self) -> None:
        while self._feeds:
            streams: dict[Any, Any] = {stream: feed.last_id for stream, feed in self._feeds.items()}
            streams[self._wake_key] = self._wake_id
            try:
                self.reads += 1
                reply: Any = await self._reader_client.xread(streams, count=COUNT, block=self._block_ms)
            except redis.RedisError as exc:
                log.warning("reading the streams failed (%s); trying again", exc)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            for name, entries in reply or ():
                self._deliver(_text(name), [(_text(entry_id), fields) for entry_id, fields in entries])

    def _deliver(self, stream: str, entries: list[Entry]) -> None:
        if stream == self._wake_key:
            self._wake_id = entries[-1][0]
            return
        feed = self._feeds.get(stream)
        if feed is None or not entries:
            return
        feed.last_id = entries[-1][0]
        for subscription in feed.subscribers:
            subscription.push(entries)


class Subscription:
    """One subscriber's share of the hub: the stream's entries after its position, each once.

    What arrives while the subscriber is busy (writing to a slow client) waits here and comes
    out as one batch, so a busy gateway writes less often, not later.
    """

    def __init__(self, hub: StreamHub, stream: str, after: str) -> None:
        self._hub = hub
        self._stream = stream
        self._after = after
        self._position = entry_key(after)
        self._pending: list[Entry] = []
        self._waiter: asyncio.Future[None] | None = None
        self._feed: _Feed | None = None

    async def __aenter__(self) -> Subscription:
        self._feed, joined_at = self._hub._join(self._stream, self._after, self)
        try:
            await self._hub._wake()
            if entry_key(joined_at) > self._position:  # the feed was ahead: the gap, read once
                gap: Any = await self._hub._redis.xrange(self._stream, min=f"({self._after}", max=joined_at)
                self._pending[:0] = [(_text(entry_id), fields) for entry_id, fields in gap]
        except BaseException:
            self._hub._leave(self._stream, self._feed, self)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._feed is not None:
            self._hub._leave(self._stream, self._feed, self)

    def push(self, entries: list[Entry]) -> None:
        self._pending.extend(entries)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self, timeout: float) -> list[Entry]:
        """The entries that came since the last call, in order, or [] if none within `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            batch = self._take()
            if batch:
                return batch
            left = deadline - loop.time()
            if left <= 0:
                return []
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(left, _settle, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None

    def _take(self) -> list[Entry]:
        pending, self._pending = self._pending, []
        if not pending:
            return pending
        position = self._position
        # Entries come in id order, so when the first is new they all are (the usual case);
        # only a batch overlapping the gap read at join needs filtering.
        if entry_key(pending[0][0]) > position:
            batch = pending
        else:
            batch = [entry for entry in pending if entry_key(entry[0]) > position]
        if batch:
            self._position = entry_key(batch[-1][0])
        return batch


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
