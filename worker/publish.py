"""The publisher: a job's events onto its Redis stream, each in one atomic step.

`started` once per attempt, each `item` the moment it is checked (rank assigned in Redis, so a
product_id appears at most once per job even across retries), and exactly one terminal event.
The answers are typed: an attempt's number or why it must not run, an item's rank or why it
was not published. It speaks through the worker's one Redis link (worker/redis_link.py), which
every job of the process shares; several items closed in one chunk are sent together, one
write, and their replies read in order (no MULTI: each item is its own atomic step).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from rankstream import keys, scripts
from rankstream.codes import EventType
from rankstream.models import Done, Failed

from .redis_link import RedisLink, Script

_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # built once, not per item


class Refused(StrEnum):
    """Why the publisher did not write: the job is over, cancelled, or already has the product."""

    JOB_ENDED = scripts.ENDED
    CANCEL_REQUESTED = scripts.CANCEL
    DUPLICATE = scripts.DUPLICATE


@dataclass(frozen=True, slots=True)
class Attempt:
    """START's answer when the attempt may run."""

    number: int  # 1-based, counted in Redis across workers
    published: frozenset[str]  # product_ids earlier attempts put on the stream
    enqueued_at: float | None
    started_at: float | None = None  # epoch seconds of the job's first attempt, by any worker


@dataclass(frozen=True, slots=True)
class Published:
    rank: int


class RedisScripts:
    """The job scripts and the link that calls them: every job of a process shares them."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.start = Script(scripts.START)
        self.publish_item = Script(scripts.PUBLISH_ITEM)
        self.finish = Script(scripts.FINISH)


class Publisher:
    """Writes one job's events. One instance per job; the client and scripts are shared."""

    def __init__(self, redis_scripts: RedisScripts, job_id: str, ttl: int, request_key: str | None = None):
        self._scripts = redis_scripts
        self._link = redis_scripts.link
        self.job_id = job_id
        self._keys = keys.job_keys(job_id)
        self._state = keys.state(job_id)
        self._request_key = request_key
        self._ttl = ttl
        self._token = secrets.token_hex(8)  # tells this job run's own retried calls from others
        self._calls = 0  # START calls so far: each gets a token of its own
        self._number = 0  # the attempt START gave, stamped on every item it publishes

    async def start(self, model: str) -> Attempt | Refused:
        self._calls += 1
        args: list[str | int] = [
            self._ttl,
            self.job_id,
            model,
            repr(time.time()),
            f"{self._token}:{self._calls}",
        ]
        reply = await self._link.evalsha(self._scripts.start, self._keys, args)
        if len(reply) == 1:
            return Refused(_text(reply[0]))
        number, published, enqueued, started = reply
        self._number = int(number)
        ids = frozenset(_text(product_id) for product_id in published)
        return Attempt(int(number), ids, _float(enqueued), _float(started))

    async def publish(self, items: Sequence[tuple[str, dict[str, Any]]]) -> list[Published | Refused]:
        """Publish items in order (one round trip for all); each answer says its rank or why not."""
        link, script = self._link, self._scripts.publish_item
        if len(items) == 1:
            return [_item_reply(await link.evalsha(script, self._keys, self._item_args(*items[0])))]

        async def all_at_once() -> list[Any]:  # sent again together, in order, after a lost reply
            sent = [link.send_script(script, self._keys, self._item_args(*item)) for item in items]
            return await link.replies(sent)

        return [_item_reply(reply) for reply in await link.retrying(all_at_once)]

    def _item_args(self, product_id: str, fields: dict[str, Any]) -> list[str | int | float]:
        body = _JSON.encode({"product_id": product_id, **fields})
        return [product_id, body[1:], self._ttl, repr(time.time()), self._number]

    async def cancel_requested(self) -> bool:
        return bool(await self._link.execute("HGET", self._state, "cancel") == b"1")

    async def moments(self) -> tuple[float | None, float | None]:
        """When the job first started, and when its first item was published (epoch seconds)."""
        started, first_item = await self._link.execute("HMGET", self._state, "started_at", "first_item_at")
        return _float(started), _float(first_item)

    async def done(self, done: Done) -> bool:
        return await self._finish(EventType.DONE, done.model_dump_json())

    async def error(self, failed: Failed) -> bool:
        return await self._finish(EventType.ERROR, failed.model_dump_json())

    async def _finish(self, event_type: EventType, data: str) -> bool:
        """True if this job run wrote the job's terminal event (false: another writer had)."""
        # One token per type: a `done` this run wrote is no reason to report its `error` as written.
        token = f"{self._token}:{event_type}"
        args: list[str | int] = [str(event_type), data, self._ttl, repr(time.time()), token]
        entry = await self._link.evalsha(self._scripts.finish, self._keys, args)
        if entry is not None and self._request_key is not None:
            # Its own slot on a cluster, so not in the script: the request_id lives as long as the stream.
            await self._link.execute("EXPIRE", self._request_key, self._ttl)
        return entry is not None


def _item_reply(reply: list[Any]) -> Published | Refused:
    value = reply[0]
    return Published(value) if isinstance(value, int) else Refused(_text(value))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _float(value: bytes | str | None) -> float | None:
    return float(value) if value else None
