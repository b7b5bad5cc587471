"""cancel(): ask a job to stop; a queued job ends at once, a running one at its next step."""

from __future__ import annotations

import time

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job

from rankstream import keys
from rankstream.models import Failed
from rankstream.queue import SERIALIZER, connect
from rankstream.scripts import finish_sync
from rankstream.settings import Settings, get_settings

from .events import HandleLike, ensure_known, job_id_of


def cancel(
    handle: HandleLike, *, connection: redis.Redis | None = None, settings: Settings | None = None
) -> bool:
    """Request cancellation. True if the job was still queued and has now ended `cancelled`.

    A running job sees the flag and ends with an `error` event, code `cancelled`; a job that
    has already ended is left as it is. Raises JobNotFound / JobGone for an unknown job.
    """
    settings = settings or get_settings()
    connection = connection or connect(settings)
    job_id = job_id_of(handle)
    ensure_known(connection, job_id, settings)
    connection.hset(keys.state(job_id), "cancel", "1")
    status = connection.hget(keys.state(job_id), "status")
    if status != b"queued":
        return False
    data = Failed(
        code="cancelled", message="cancelled before a worker picked it up", retryable=False, attempt=0
    )
    wrote = finish_sync(
        connection, keys.job_keys(job_id), "error", data.model_dump_json(), settings.stream_ttl, time.time()
    )
    if wrote:
        _drop_from_queue(connection, job_id)
        request_key = connection.hget(keys.state(job_id), "request_key")
        if request_key:
            connection.expire(request_key, settings.stream_ttl)
    return wrote


def _drop_from_queue(connection: redis.Redis, job_id: str) -> None:
    try:
        Job.fetch(job_id, connection=connection, serializer=SERIALIZER).cancel()
    except NoSuchJobError:
        pass
    except Exception:
        pass
