"""Redis key names and job ids: the one place that knows how keys are spelt.

Every key of one job carries the job id as a hash tag (`{JOB_ID}`), so the Lua scripts that
touch several of them stay on one Redis Cluster slot. Job ids start with their creation time,
which lets a reader tell an expired job (gone) from one that never existed.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

PREFIX = "rankstream"
_JOB_ID = re.compile(r"^[0-9a-f]{12}[0-9a-f]{16}$")


def new_job_id(now: float | None = None) -> str:
    """28 hex digits: 12 of milliseconds since the epoch, 16 random. Sorts by creation time."""
    millis = int((time.time() if now is None else now) * 1000)
    return f"{millis:012x}{secrets.token_hex(8)}"


def is_job_id(value: str) -> bool:
    return bool(_JOB_ID.match(value))


def job_created_at(job_id: str) -> float:
    """Creation time (epoch seconds) encoded in a job id made by new_job_id."""
    return int(job_id[:12], 16) / 1000


def events(job_id: str) -> str:
    """The job's event stream."""
    return f"{PREFIX}:{{{job_id}}}:events"


def state(job_id: str) -> str:
    """Hash: enqueued_at, status, attempt, cancel flag and timings of the job."""
    return f"{PREFIX}:{{{job_id}}}:state"


def published(job_id: str) -> str:
    """Hash product_id -> "attempt:rank" of what is on the stream: at most once per job, across retries."""
    return f"{PREFIX}:{{{job_id}}}:ranks"  # not ":published", a set in versions before 0.2


def job_keys(job_id: str) -> list[str]:
    """In the order the Lua scripts expect: state, events, published."""
    return [state(job_id), events(job_id), published(job_id)]


def leases(queue: str) -> str:
    """Sorted set job_id -> when its worker's lease runs out (epoch seconds), per queue."""
    return f"{PREFIX}:leases:{{{queue}}}"


def request(request_id: str) -> str:
    """request_id -> job_id, so enqueueing one request_id twice gives one job."""
    digest = hashlib.sha256(request_id.encode("utf-8")).hexdigest()[:32]
    return f"{PREFIX}:request:{digest}"
