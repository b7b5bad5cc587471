"""The publisher: a job's events onto its Redis stream, each in one atomic step.

`started` once per attempt, each `item` the moment it is checked (rank assigned in Redis, so a
product_id appears at most once per job even across retries), and exactly one terminal event.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from rankstream import keys
from rankstream.models import Done, Failed
from rankstream.scripts import JobScripts

JOB_ENDED = -1
CANCEL_REQUESTED = -2
DUPLICATE = 0


@dataclass(frozen=True, slots=True)
class Start:
    attempt: int  # JOB_ENDED or CANCEL_REQUESTED when the job must not run
    already_published: int
    enqueued_at: float | None


class Publisher:
    """Writes one job's events. One instance per job; the client and scripts are shared."""

    def __init__(self, client: aioredis.Redis, scripts: JobScripts, job_id: str, ttl: int) -> None:
        self._client = client
        self._scripts = scripts
        self.job_id = job_id
        self._keys = keys.job_keys(job_id)
        self._state = keys.state(job_id)
        self._ttl = ttl

    async def start(self, model: str) -> Start:
        attempt, published = await self._scripts.start(
            keys=self._keys, args=[self._ttl, self.job_id, model, repr(time.time())]
        )
        enqueued = await self._client.hget(self._state, "enqueued_at")
        return Start(int(attempt), int(published), float(enqueued) if enqueued else None)

    async def item(self, product_id: str, fields: dict[str, Any]) -> int:
        """Publish one item; its rank, or DUPLICATE, JOB_ENDED or CANCEL_REQUESTED."""
        body = json.dumps({"product_id": product_id, **fields}, ensure_ascii=False, separators=(",", ":"))
        rank, _entry = await self._scripts.publish_item(
            keys=self._keys, args=[product_id, body[1:], self._ttl, repr(time.time())]
        )
        return int(rank)

    async def cancel_requested(self) -> bool:
        return bool(await self._client.hget(self._state, "cancel") == b"1")

    async def moments(self) -> tuple[float | None, float | None]:
        """When the job first started, and when its first item was published (epoch seconds)."""
        started, first_item = await self._client.hmget(self._state, ["started_at", "first_item_at"])
        return (float(started) if started else None, float(first_item) if first_item else None)

    async def done(self, done: Done) -> bool:
        return await self._finish("done", done.model_dump_json())

    async def error(self, failed: Failed) -> bool:
        return await self._finish("error", failed.model_dump_json())

    async def _finish(self, event_type: str, data: str) -> bool:
        """True if this call wrote the job's terminal event (false: it already had one)."""
        entry = await self._scripts.finish(
            keys=self._keys, args=[event_type, data, self._ttl, repr(time.time())]
        )
        return bool(entry)
