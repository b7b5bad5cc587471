"""The producer's asyncio shell: the same calls as producer/client.py, for event-loop callers.

`events` and `status` are native asyncio (redis.asyncio), so a gateway can serve many
subscribers on one loop. `enqueue` and `cancel` run the synchronous shell in a worker thread:
RQ writes its jobs with a synchronous client, and both are one or two round trips.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import redis.asyncio

from rankstream import keys
from rankstream.connections import aconnect
from rankstream.models import Event, Handle, JobStatus, RankingRequest
from rankstream.settings import Settings, get_settings

from . import client, core
from .core import HandleLike


async def enqueue(request: RankingRequest | Mapping[str, Any], *, settings: Settings | None = None) -> Handle:
    """As producer.enqueue: validated here, on the loop, so a refused request costs no thread hop."""
    ranking = core.validate(request)
    return await asyncio.to_thread(client.enqueue, ranking, settings=settings)


async def cancel(handle: HandleLike, *, settings: Settings | None = None) -> bool:
    """As producer.cancel."""
    return await asyncio.to_thread(client.cancel, handle, settings=settings)


async def status(
    handle: HandleLike, *, connection: redis.asyncio.Redis | None = None, settings: Settings | None = None
) -> JobStatus:
    """As producer.status."""
    settings = settings or get_settings()
    connection = connection or aconnect(settings)
    job_id = core.job_id_of(handle)
    async with connection.pipeline(transaction=False) as pipe:
        pipe.hget(keys.state(job_id), "status")
        pipe.xrange(keys.events(job_id))
        state, entries = await pipe.execute()
    return core.status_of(job_id, state, entries, settings)


async def events(
    handle: HandleLike,
    *,
    after: str = "0-0",
    block: float = 1.0,
    connection: redis.asyncio.Redis | None = None,
    settings: Settings | None = None,
) -> AsyncIterator[Event]:
    """As producer.events, as an async generator (bound its time with asyncio.timeout)."""
    settings = settings or get_settings()
    connection = connection or aconnect(settings)
    job_id = core.job_id_of(handle)
    await ensure_known(connection, job_id, settings)
    stream = keys.events(job_id)
    block_ms = core.xread_block_ms(block, connection.connection_pool.connection_kwargs.get("socket_timeout"))
    last = after
    while True:
        reply: Any = await connection.xread({stream: last}, count=256, block=block_ms)
        if not reply:
            await ensure_known(connection, job_id, settings)  # expired while we waited?
            continue
        for entry_id, fields in reply[0][1]:
            event = core.parse_entry(entry_id, fields)
            last = event.id
            yield event
            if event.terminal:
                return


async def ensure_known(connection: redis.asyncio.Redis, job_id: str, settings: Settings) -> None:
    """JobNotFound or JobGone unless the job has a stream or a state (it is queued, running or ended)."""
    if not (keys.is_job_id(job_id) and await connection.exists(keys.events(job_id), keys.state(job_id))):
        raise core.lookup_error(job_id, settings)
