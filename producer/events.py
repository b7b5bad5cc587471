"""events(): a job's stream as a Python generator, from any point, ending after its terminal event."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

import redis

from rankstream import keys
from rankstream.exceptions import JobGone, JobNotFound
from rankstream.models import Event, Handle
from rankstream.queue import connect
from rankstream.settings import Settings, get_settings

HandleLike = Handle | Mapping[str, Any] | str


def job_id_of(handle: HandleLike) -> str:
    if isinstance(handle, Handle):
        return handle.job_id
    if isinstance(handle, Mapping):
        return str(handle["job_id"])
    return handle


def ensure_known(connection: redis.Redis, job_id: str, settings: Settings) -> None:
    """Raise JobNotFound or JobGone unless the job's keys exist."""
    if keys.is_job_id(job_id) and connection.exists(keys.events(job_id), keys.state(job_id)):
        return
    raise lookup_error(job_id, settings)


def lookup_error(job_id: str, settings: Settings) -> JobNotFound | JobGone:
    """What a missing job is: gone if its id says it was made longer than the TTL ago."""
    if keys.is_job_id(job_id) and keys.job_created_at(job_id) + settings.stream_ttl < time.time():
        return JobGone(job_id)
    return JobNotFound(job_id)


def parse_entry(entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> Event:
    return Event(
        id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
        type=fields[b"type"].decode(),  # type: ignore[arg-type]
        data=json.loads(fields[b"data"]),
    )


def events(
    handle: HandleLike,
    *,
    after: str = "0-0",
    block: float = 1.0,
    timeout: float | None = None,
    connection: redis.Redis | None = None,
    settings: Settings | None = None,
) -> Iterator[Event]:
    """Yield the job's events from after `after` (a stream entry id), ending after the terminal one.

    Raises JobNotFound / JobGone for a job that does not exist (or no longer does), and
    TimeoutError if `timeout` seconds pass without the terminal event.
    """
    settings = settings or get_settings()
    connection = connection or connect(settings)
    job_id = job_id_of(handle)
    ensure_known(connection, job_id, settings)
    stream = keys.events(job_id)
    deadline = None if timeout is None else time.monotonic() + timeout
    last = after
    while True:
        wait = block if deadline is None else min(block, deadline - time.monotonic())
        if wait <= 0:
            raise TimeoutError(f"job {job_id}: no terminal event within {timeout}s")
        reply: Any = connection.xread({stream: last}, count=256, block=max(1, int(wait * 1000)))
        if not reply:
            ensure_known(connection, job_id, settings)  # expired while we waited?
            continue
        for entry_id, fields in reply[0][1]:
            event = parse_entry(entry_id, fields)
            last = event.id
            yield event
            if event.terminal:
                return
