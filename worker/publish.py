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

from .resp import RespClient, Script

JOB_ENDED = -1
CANCEL_REQUESTED = -2
DUPLICATE = 0

START = Script(scripts.START)
PUBLISH_ITEM = Script(scripts.PUBLISH_ITEM)
FINISH = Script(scripts.FINISH)


@dataclass(frozen=True, slots=True)
class Start:
    attempt: int  # JOB_ENDED or CANCEL_REQUESTED when the job must not run
    already_published: int
    enqueued_at: float | None


class Publisher:
    """Writes one job's events. One instance per job; the client is shared by all jobs."""

    def __init__(self, client: RespClient, job_id: str, ttl: int) -> None:
        self._client = client
        self.job_id = job_id
        self._keys = keys.job_keys(job_id)
        self._state = keys.state(job_id)
        self._ttl = ttl

    async def start(self, model: str) -> Start:
        reply = await self._client.evalsha(
            START, self._keys, [self._ttl, self.job_id, model, repr(time.time())]
        )
        attempt, published, enqueued = reply  # type: ignore[misc]
        return Start(int(attempt), int(published), float(enqueued) if enqueued else None)  # type: ignore[arg-type]

    async def item(self, product_id: str, fields: dict[str, object]) -> int:
        """Publish one item; its rank, or DUPLICATE, JOB_ENDED or CANCEL_REQUESTED."""
        body = json.dumps({"product_id": product_id, **fields}, ensure_ascii=False, separators=(",", ":"))
        reply = await self._client.evalsha(
            PUBLISH_ITEM, self._keys, [product_id, body[1:], self._ttl, repr(time.time())]
        )
        return int(reply[0])  # type: ignore[index, arg-type]

    async def cancel_requested(self) -> bool:
        return await self._client.execute("HGET", self._state, "cancel") == b"1"

    async def moments(self) -> tuple[float | None, float | None]:
        """When the job first started, and when its first item was published (epoch seconds)."""
        started, first_item = await self._client.execute("HMGET", self._state, "started_at", "first_item_at")  # type: ignore[misc]
        return (float(started) if started else None, float(first_item) if first_item else None)  # type: ignore[arg-type]

    async def done(self, done: Done) -> bool:
        return await self._finish("done", done.model_dump_json())

    async def error(self, failed: Failed) -> bool:
        return await self._finish("error", failed.model_dump_json())

    async def _finish(self, event_type: str, data: str) -> bool:
        """True if this call wrote the job's terminal event (false: it already had one)."""
        entry = await self._client.evalsha(
            FINISH, self._keys, [event_type, data, self._ttl, repr(time.time())]
        )
        return entry is not None
