"""The producer's logic without I/O: requests in, handles, events and statuses out.

Both shells, the synchronous one (producer/client.py) and the asyncio one (producer/aio.py),
do their Redis calls around these functions, so validation, the request_id rule, how a
missing job is told apart from an expired one, and how an entry becomes an Event are written
once.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from rankstream import keys
from rankstream.codes import ErrorCode, EventType
from rankstream.exceptions import InvalidRequest, JobGone, JobNotFound, RequestConflict
from rankstream.models import Event, Failed, Handle, JobStatus, RankingRequest, Timings
from rankstream.settings import Settings

HandleLike = Handle | Mapping[str, Any] | str


def validate(request: RankingRequest | Mapping[str, Any]) -> RankingRequest:
    """The request model, or InvalidRequest naming every offending field."""
    if isinstance(request, RankingRequest):
        return request
    if not isinstance(request, Mapping):
        raise InvalidRequest([{"field": "request", "message": "must be a JSON object"}])
    try:
        return RankingRequest.model_validate(request)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]) or "request", "message": e["msg"]}
            for e in exc.errors()
        ]
        raise InvalidRequest(errors) from None


def handle_for(job_id: str) -> Handle:
    return Handle(job_id=job_id, stream_key=keys.events(job_id))


def job_id_of(handle: HandleLike) -> str:
    if isinstance(handle, Handle):
        return handle.job_id
    if isinstance(handle, Mapping):
        return str(handle["job_id"])
    return handle


@dataclass(frozen=True, slots=True)
class NewJob:
    """Everything enqueue writes for one request, decided before any I/O."""

    job_id: str
    request: RankingRequest
    payload: dict[str, Any]  # the RQ job's one argument
    state: dict[str, str]  # the job's state hash
    claim: str | None  # the request_id key's value: "JOB_ID DIGEST"

    @property
    def handle(self) -> Handle:
        return handle_for(self.job_id)


def new_job(request: RankingRequest) -> NewJob:
    job_id = keys.new_job_id()
    payload = request.model_dump(mode="json")
    state = {"enqueued_at": repr(time.time()), "status": "queued"}
    claim = None
    if request.request_id is not None:
        state["request_key"] = keys.request(request.request_id)  # whoever ends the job renews it
        claim = f"{job_id} {_digest(payload)}"
    return NewJob(job_id, request, payload, state, claim)


def _digest(payload: Mapping[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def existing_job(job: NewJob, claim: bytes | str) -> Handle:
    """The request_id is taken: its job if the body is the same, else RequestConflict.

    A claim the previous version wrote holds the job id alone, no digest: it is taken as the
    same body, since there is nothing to compare, rather than refusing every retry of a request
    enqueued before an upgrade.
    """
    text = claim.decode() if isinstance(claim, bytes) else claim
    job_id, _, digest = text.partition(" ")
    assert job.claim is not None and job.request.request_id is not None
    if digest and digest != job.claim.partition(" ")[2]:
        raise RequestConflict(job.request.request_id, job_id)
    return handle_for(job_id)


def lookup_error(job_id: str, settings: Settings) -> JobNotFound | JobGone:
    """What a missing job is: gone if its id says it was made longer than the TTL ago."""
    if keys.is_job_id(job_id) and keys.job_created_at(job_id) + settings.stream_ttl < time.time():
        return JobGone(job_id)
    return JobNotFound(job_id)


def parse_entry(entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> Event:
    return Event(
        id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
        type=EventType(fields[b"type"].decode()),
        data=json.loads(fields[b"data"]),
    )


def xread_block_ms(block: float, socket_timeout: float | None) -> int:
    """XREAD's BLOCK for a wait of `block` seconds, in milliseconds (at least 1: 0 blocks for ever).

    Capped below the connection's socket timeout, keeping a fifth of it for the round trip:
    a BLOCK as long as the timeout would make redis-py give up on a reply that was coming.
    """
    if socket_timeout:
        block = min(block, 0.8 * socket_timeout)
    return max(1, int(block * 1000))


_STARTED = ("running", "done", "error")  # a job in one of these states has written to its stream


def status_of(
    job_id: str,
    status: bytes | None,
    entries: Sequence[tuple[bytes, Mapping[bytes, bytes]]],
    settings: Settings,
) -> JobStatus:
    """A job's status from its state's `status` field and its stream's entries.

    The stream's terminal event, when it has one, says how the job ended; else the state says
    where it is, and without a state a live stream is read alone: a job that has started and
    not ended is running. A job whose state says it started but whose stream is gone is
    JobGone, never an empty job; a job with neither is JobNotFound or JobGone (`lookup_error`).
    """
    recorded = status.decode() if status else None
    if not entries and recorded is None:
        raise lookup_error(job_id, settings)
    if not entries and recorded in _STARTED:
        raise JobGone(job_id)  # its stream expired (or was deleted) before its state
    events = [parse_entry(entry_id, fields) for entry_id, fields in entries]
    items = [e.data for e in events if e.type is EventType.ITEM]
    terminal = next((e for e in reversed(events) if e.terminal), None)
    if terminal is None:
        return JobStatus.model_validate({"job_id": job_id, "status": recorded or "running", "items": items})
    if terminal.type is EventType.DONE:
        timings = Timings.model_validate(terminal.data.get("timings", {}))
        return JobStatus(job_id=job_id, status="done", items=items, timings=timings)
    return JobStatus(job_id=job_id, status="error", items=items, error=Failed.model_validate(terminal.data))


def cancelled_while_queued() -> Failed:
    return Failed(
        code=ErrorCode.CANCELLED, message="cancelled before a worker picked it up", retryable=False, attempt=0
    )
