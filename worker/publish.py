"""The publisher: a job's events onto its Redis stream, each in one atomic step.

`started` once per attempt, each `item` the moment it is checked (rank assigned in Redis, so a
product_id appears at most once per job even across retries), and exactly one terminal event.
It speaks through the worker's RespClient: this is the hot path between an element closing
and a subscriber holding it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from rankstream import keys, scripts
from rankstream.models import Done, Failed

from .resp import Reply, RespClient, RespError, Script, Sent

JOB_ENDED = -1
CANCEL_REQUESTED = -2
DUPLICATE = 0

_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # built once, not per item

START = Script(scripts.START)
PUBLISH_ITEM = Script(scripts.PUBLISH_ITEM)
FINISH = Script(scripts.FINISH)
SCRIPTS = (START, PUBLISH_ITEM, FINISH)


@dataclass(frozen=True, slots=True)
class Start:
    attempt: int  # JOB_ENDED or CANCEL_REQUESTED when the job must not run
    already_published: int
    enqueued_at: float | None


class Publisher:
    """Writes one job's events. One instance per job; the client is shared by all jobs."""

    def __init__(self, client: RespClient, job_id: str, ttl: int, request_key: str | None = None) -> None:
        self._client = client
        self.job_id = job_id
        self._request_key = request_key
        job_keys = keys.job_keys(job_id)
        self._start = START.bind(job_keys)
        self._publish_item = PUBLISH_ITEM.bind(job_keys)
        self._finish_job = FINISH.bind(job_keys)
        self._state = keys.state(job_id)
        self._ttl = ttl

    async def start(self, model: str) -> Start:
        reply = await self._client.evalsha(self._start, [self._ttl, self.job_id, model, repr(time.time())])
        attempt, published, enqueued = _array(reply, 3)
        return Start(_int(attempt), _int(published), _float(enqueued))

    def send_item(self, product_id: str, fields: dict[str, object]) -> Sent:
        """Publish one item without waiting (`rank` reads the outcome); items land in the order sent."""
        body = _JSON.encode({"product_id": product_id, **fields})
        return self._client.send(self._publish_item, [product_id, body[1:], self._ttl, repr(time.time())])

    @staticmethod
    async def rank(sent: Sent) -> int:
        """A sent item's rank, or DUPLICATE, JOB_ENDED or CANCEL_REQUESTED."""
        return _int(_array(await sent.result(), 2)[0])

    async def cancel_requested(self) -> bool:
        return await self._client.execute("HGET", self._state, "cancel") == b"1"

    async def moments(self) -> tuple[float | None, float | None]:
        """When the job first started, and when its first item was published (epoch seconds)."""
        reply = await self._client.execute("HMGET", self._state, "started_at", "first_item_at")
        started, first_item = _array(reply, 2)
        return _float(started), _float(first_item)

    async def done(self, done: Done) -> bool:
        return await self._finish("done", done.model_dump_json())

    async def error(self, failed: Failed) -> bool:
        return await self._finish("error", failed.model_dump_json())

    async def _finish(self, event_type: str, data: str) -> bool:
        """True if this call wrote the job's terminal event (false: it already had one)."""
        entry = await self._client.evalsha(self._finish_job, [event_type, data, self._ttl, repr(time.time())])
        if entry is not None and self._request_key is not None:
            # Its own slot on a cluster, so not in the script: the request_id lives as long as the stream.
            await self._client.execute("EXPIRE", self._request_key, self._ttl)
        return entry is not None


def _array(reply: Reply, length: int) -> list[Reply]:
    if not isinstance(reply, list) or len(reply) != length:
        raise RespError(f"expected {length} values from Redis, got {reply!r}")
    return reply


def _int(value: Reply) -> int:
    if isinstance(value, int | bytes):
        return int(value)
    raise RespError(f"expected an integer from Redis, got {value!r}")


def _float(value: Reply) -> float | None:
    """A timestamp field: None when missing or empty."""
    return float(value) if isinstance(value, int | bytes) and value != b"" else None
