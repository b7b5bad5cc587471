"""The producer's synchronous shell: `enqueue`, `events`, `cancel` and `status` over redis-py.

Settings and the Redis connection pool are made once per process and shared by every call
(redis-py's pool reconnects by itself in a forked child), so an upstream web service pays one
round trip per `enqueue`, not a settings parse and a TCP connect.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator, Mapping
from typing import Any

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job

from rankstream import keys, scripts
from rankstream.codes import EventType
from rankstream.connections import connect
from rankstream.models import Event, Handle, JobStatus, RankingRequest
from rankstream.queue import JOB_FUNCTION, SERIALIZER, ranking_queue
from rankstream.settings import Settings, get_settings

from . import core
from .core import HandleLike


def enqueue(
    request: RankingRequest | Mapping[str, Any],
    *,
    connection: redis.Redis | None = None,
    settings: Settings | None = None,
) -> Handle:
    """Validate and enqueue; returns the handle `{job_id, stream_key}`.

    The same request_id and body enqueued twice give the same job; the same request_id with
    another body raises RequestConflict. A refused request raises InvalidRequest; either way
    nothing is enqueued.
    """
    settings = settings or get_settings()
    job = core.new_job(core.validate(request))
    connection = connection or connect(settings)
    with connection.pipeline() as pipe:
        while True:
            try:
                return _try_enqueue(connection, pipe, job, settings)
            except redis.WatchError:
                # A watched key changed, or the connection broke while watching: redis-py then
                # raises instead of sending the transaction again, which could queue the job twice.
                if job.claim is None and connection.exists(keys.state(job.job_id)):
                    return job.handle  # the transaction landed; only its reply was lost
                # else try again: a request_id's claim now names the job that has it


def _try_enqueue(connection: redis.Redis, pipe: Any, job: core.NewJob, settings: Settings) -> Handle:
    """One WATCH and one transaction: the claim (if any), the state and the RQ job, or nothing.

    The job's state key is watched too, so a lost reply to EXEC surfaces as WatchError.
    """
    state = keys.state(job.job_id)
    queue = ranking_queue(connection, settings)
    # RQ asks the client for the server's version once (INFO, outside the pipeline): asked now,
    # before WATCH holds a connection, one pooled connection serves every enqueue.
    queue.get_redis_server_version()
    if job.claim is None:
        pipe.watch(state)
        pipe.multi()  # RQ adds its commands to this transaction
        _write_job(queue, pipe, job, settings)
        pipe.execute()
        return job.handle
    claim_key = keys.request(job.request.request_id or "")
    pipe.watch(claim_key, state)  # the claim and the job land together, or neither does
    claimed = pipe.get(claim_key)
    if claimed is not None:
        return core.existing_job(job, claimed)
    pipe.multi()
    pipe.set(claim_key, job.claim, ex=settings.stream_ttl)
    _write_job(queue, pipe, job, settings)
    pipe.execute()
    return job.handle


def _write_job(queue: Queue, pipe: Any, job: core.NewJob, settings: Settings) -> None:
    """Queue, in the pipeline's transaction, the job's state hash and the RQ job."""
    state = keys.state(job.job_id)
    pipe.hset(state, mapping=job.state)
    pipe.expire(state, settings.stream_ttl)
    queue.enqueue_call(
        JOB_FUNCTION,
        args=(job.payload,),
        job_id=job.job_id,
        timeout=int(settings.job_timeout) + 60,  # the job keeps its own deadlines; this is a backstop
        result_ttl=settings.stream_ttl,
        failure_ttl=settings.stream_ttl,
        description=f"rank {len(job.request.products)} products",
        pipeline=pipe,
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
    """Yield the job's events after `after` (a stream entry id), ending after the terminal one.

    Raises JobNotFound / JobGone for a job that does not exist (or no longer does), and
    TimeoutError if `timeout` seconds pass without the terminal event. Each wait on Redis stops
    short of the connection's socket timeout, so any `block` works with any REDIS_URL.
    """
    settings = settings or get_settings()
    connection = connection or connect(settings)
    job_id = core.job_id_of(handle)
    _ensure_known(connection, job_id, settings)
    stream = keys.events(job_id)
    socket_timeout = connection.connection_pool.connection_kwargs.get("socket_timeout")
    deadline = None if timeout is None else time.monotonic() + timeout
    last = after
    while True:
        wait = block if deadline is None else min(block, deadline - time.monotonic())
        if wait <= 0:
            raise TimeoutError(f"job {job_id}: no terminal event within {timeout}s")
        reply: Any = connection.xread(
            {stream: last}, count=256, block=core.xread_block_ms(wait, socket_timeout)
        )
        if not reply:
            _ensure_known(connection, job_id, settings)  # expired while we waited?
            continue
        for entry_id, fields in reply[0][1]:
            event = core.parse_entry(entry_id, fields)
            last = event.id
            yield event
            if event.terminal:
                return


def status(
    handle: HandleLike, *, connection: redis.Redis | None = None, settings: Settings | None = None
) -> JobStatus:
    """The job now: queued, running, done or error, its items so far, and its timings once done."""
    settings = settings or get_settings()
    connection = connection or connect(settings)
    job_id = core.job_id_of(handle)
    with connection.pipeline(transaction=False) as pipe:
        pipe.hget(keys.state(job_id), "status")
        pipe.xrange(keys.events(job_id))
        state, entries = pipe.execute()
    return core.status_of(job_id, state, entries, settings)


def cancel(
    handle: HandleLike, *, connection: redis.Redis | None = None, settings: Settings | None = None
) -> bool:
    """Request cancellation. True if the job was still queued and has now ended `cancelled`.

    A running job sees the flag and ends with an `error` event, code `cancelled`; a job that
    has already ended is left as it is. Raises JobNotFound / JobGone for an unknown job.
    """
    settings = settings or get_settings()
    connection = connection or connect(settings)
    job_id = core.job_id_of(handle)
    _ensure_known(connection, job_id, settings)
    state = keys.state(job_id)
    if connection.register_script(scripts.REQUEST_CANCEL)(keys=[state]) != b"queued":
        return False  # running: it sees the flag; ended or gone: nothing to do
    data = core.cancelled_while_queued().model_dump_json()
    token = f"cancel:{secrets.token_hex(8)}"
    finish = connection.register_script(scripts.FINISH)
    if not finish(
        keys=keys.job_keys(job_id), args=[EventType.ERROR, data, settings.stream_ttl, time.time(), token]
    ):
        return False
    _drop_from_queue(connection, job_id)
    request_key = connection.hget(state, "request_key")
    if request_key:
        connection.expire(request_key, settings.stream_ttl)
    return True


def _ensure_known(connection: redis.Redis, job_id: str, settings: Settings) -> None:
    """Raise JobNotFound or JobGone unless the job's keys exist."""
    if not (keys.is_job_id(job_id) and connection.exists(keys.events(job_id), keys.state(job_id))):
        raise core.lookup_error(job_id, settings)


def _drop_from_queue(connection: redis.Redis, job_id: str) -> None:
    """Take the ended job off RQ's queue, so `rq info` and the queue depth stop counting it."""
    with contextlib.suppress(NoSuchJobError):  # RQ already let it go; a worker skips an ended job
        Job.fetch(job_id, connection=connection, serializer=SERIALIZER).cancel()
