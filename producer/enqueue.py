"""enqueue(): validate a ranking request, put it on the RQ queue, return its handle."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import redis
from pydantic import ValidationError

from rankstream import keys
from rankstream.exceptions import InvalidRequest
from rankstream.models import Handle, RankingRequest
from rankstream.queue import JOB_FUNCTION, connect, ranking_queue
from rankstream.settings import Settings, get_settings


def validate(request: RankingRequest | Mapping[str, Any]) -> RankingRequest:
    """The request model, or InvalidRequest naming every offending field."""
    if isinstance(request, RankingRequest):
        return request
    if not isinstance(request, Mapping):
        raise InvalidRequest([{"field": "request", "message": "must be a JSON object"}])
    try:
        return RankingRequest.model_validate(request)
    except ValidationError as exc:
        raise InvalidRequest(
            [
                {"field": ".".join(str(p) for p in e["loc"]) or "request", "message": e["msg"]}
                for e in exc.errors()
            ]
        ) from None


def handle_for(job_id: str) -> Handle:
    return Handle(job_id=job_id, stream_key=keys.events(job_id))


def enqueue(
    request: RankingRequest | Mapping[str, Any],
    *,
    connection: redis.Redis | None = None,
    settings: Settings | None = None,
) -> Handle:
    """Validate and enqueue; the same request_id enqueued twice gives the same job."""
    settings = settings or get_settings()
    ranking = validate(request)
    connection = connection or connect(settings)
    job_id = keys.new_job_id()
    if ranking.request_id is not None:
        existing = _claim_request_id(connection, ranking.request_id, job_id, settings.stream_ttl)
        if existing is not None:
            return handle_for(existing)
    _enqueue_job(connection, settings, job_id, ranking)
    return handle_for(job_id)


def _claim_request_id(connection: redis.Redis, request_id: str, job_id: str, ttl: int) -> str | None:
    """None if this call claimed the request_id for job_id, else the job that already has it."""
    key = keys.request(request_id)
    while True:
        if connection.set(key, job_id, nx=True, ex=ttl):
            return None
        existing = connection.get(key)
        if existing is not None:  # else it expired between SET and GET: claim again
            return existing.decode() if isinstance(existing, bytes) else str(existing)


def _enqueue_job(connection: redis.Redis, settings: Settings, job_id: str, ranking: RankingRequest) -> None:
    queue = ranking_queue(connection, settings)
    with connection.pipeline() as pipe:
        pipe.multi()  # the state hash and the RQ job land together or not at all
        state = keys.state(job_id)
        pipe.hset(state, mapping={"enqueued_at": repr(time.time()), "status": "queued"})
        if ranking.request_id is not None:
            # whoever ends the job keeps the request_id as long as the stream
            pipe.hset(state, "request_key", keys.request(ranking.request_id))
        pipe.expire(state, settings.stream_ttl)
        queue.enqueue_call(
            JOB_FUNCTION,
            args=(ranking.model_dump(mode="json"),),
            job_id=job_id,
            timeout=int(settings.job_timeout) + 60,  # the job keeps its own deadlines; this is a backstop
            result_ttl=settings.stream_ttl,
            failure_ttl=settings.stream_ttl,
            description=f"rank {len(ranking.products)} products",
            pipeline=pipe,
        )
        pipe.execute()
