"""Leases: a job whose worker died is resumed on a live worker, or ended, within the lease.

Each running job holds a lease in a sorted set per queue (`rankstream.keys.leases`), renewed
by its worker's heartbeat. A lease runs out two thirds of RANKSTREAM_LEASE_SECONDS after its
last renewal; every worker looks for run-out leases six times per lease, so a SIGKILLed,
OOM-killed or vanished worker's jobs are taken over within the lease. Exactly one worker wins
each takeover (CLAIM_LEASE). The winner requeues the job at the front of its queue when it has
attempts and time left (the ranking then continues after the items already published, as any
retry does), or writes its terminal event, `error` `worker_lost`, and RQ's failure.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterable

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry

from rankstream import keys, scripts
from rankstream.codes import ErrorCode, EventType
from rankstream.models import Failed
from rankstream.settings import Settings

log = logging.getLogger("rankstream.worker")

REAP_BATCH = 50  # run-out leases taken over per look


class Leases:
    """One worker's view of its queue's leases (synchronous: the heartbeat thread uses it)."""

    def __init__(self, connection: redis.Redis, queue: Queue, settings: Settings) -> None:
        self._connection = connection
        self._queue = queue
        self._settings = settings
        self._key = keys.leases(queue.name)
        self._claim = connection.register_script(scripts.CLAIM_LEASE)
        self._hold = connection.register_script(scripts.HOLD_LEASES)
        self._release_claim = connection.register_script(scripts.RELEASE_CLAIM)
        self._seen_dequeued: set[str] = set()  # in RQ's intermediate list at the last look
        self._finish = connection.register_script(scripts.FINISH)

    @property
    def renew_every(self) -> float:
        """How often a holder renews (and looks for run-out leases)."""
        return self._settings.lease_seconds / 6

    @property
    def _length(self) -> float:
        return self._settings.lease_seconds * 2 / 3

    def _now(self) -> float:
        """Redis's clock: the one every worker's leases are measured on."""
        seconds, micros = self._connection.time()
        return seconds + micros / 1_000_000

    def hold(self, job_ids: Iterable[str], pipe: redis.client.Pipeline | None = None) -> None:
        """Take or renew the leases of these running jobs."""
        ids = list(job_ids)
        if ids:
            self._hold(keys=[self._key], args=[self._length, *ids], client=pipe)

    def release(self, job_id: str) -> None:
        self._connection.zrem(self._key, job_id)

    def reap(self, mine: Iterable[str] = ()) -> int:
        """Take over every job whose lease ran out, and every orphan; how many this worker took.

        `mine`: the jobs this worker runs. Their leases are its own to renew, never to take over.
        """
        return self._reap_expired(set(mine)) + self._reap_orphans()

    def _reap_orphans(self) -> int:
        """Jobs a worker dequeued and died with before it could take their lease.

        A dequeued job waits in RQ's intermediate list only for the few milliseconds before its
        worker takes its lease and starts it; one still there a whole look later, with no lease,
        lost its worker. The first reaper to lease it puts it back on the queue.
        """
        raw = self._connection.lrange(self._queue.intermediate_queue_key, 0, -1)
        listed = {item.decode() if isinstance(item, bytes) else str(item) for item in raw}
        stale, self._seen_dequeued = listed & self._seen_dequeued, listed
        taken = 0
        for job_id in stale:
            until = repr(self._now() + self._length)
            if not self._connection.zadd(self._key, {job_id: until}, nx=True):
                continue  # it has a lease: its worker is alive, or the expiry reaper deals with it
            if self._connection.lrem(self._queue.intermediate_queue_key, 1, job_id):
                taken += 1
                log.warning("job %s: its worker died as it took the job; putting it back", job_id)
                self._take_over(job_id, until)
            else:  # a worker moved it on meanwhile
                self._release_claim(keys=[self._key], args=[job_id, until])
        return taken

    def _reap_expired(self, mine: set[str]) -> int:
        now = self._now()
        expired = self._connection.zrangebyscore(self._key, "-inf", now, start=0, num=REAP_BATCH)
        taken = 0
        for raw in expired:
            job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            if job_id in mine:
                continue
            until = repr(now + self._length)
            if self._claim(keys=[self._key], args=[job_id, now, until]) == 1:
                taken += 1
                self._take_over(job_id, until)
        return taken

    def _take_over(self, job_id: str, until: str) -> None:
        raw: dict[bytes, bytes] = self._connection.hgetall(keys.state(job_id))  # type: ignore[assignment]
        state = {k.decode(): v.decode() for k, v in raw.items()}
        if state and "terminal" not in state:
            attempts = int(state.get("attempt", "0"))
            started = float(state.get("started_at") or state.get("enqueued_at") or time.time())
            if attempts < self._settings.max_attempts and started + self._settings.job_timeout > time.time():
                log.warning(
                    "job %s: its worker is gone; resuming it (attempt %d was its last)", job_id, attempts
                )
                self._requeue(job_id)
            else:
                log.warning(
                    "job %s: its worker is gone and it has no attempt or time left; ending it", job_id
                )
                self._end(job_id, attempts, state.get("request_key"))
        # Only our claim: the worker that took the requeued job up may already hold a lease of its own.
        self._release_claim(keys=[self._key], args=[job_id, until])

    def _requeue(self, job_id: str) -> None:
        try:
            job = Job.fetch(job_id, connection=self._connection, serializer=self._queue.serializer)
        except NoSuchJobError:
            self._end(job_id, 0, None)
            return
        self._queue.started_job_registry.remove_executions(job)  # the dead worker's, or RQ reaps it later
        self._queue.enqueue_job(job, at_front=True)

    def _end(self, job_id: str, attempts: int, request_key: str | None) -> None:
        failed = Failed(
            code=ErrorCode.WORKER_LOST,
            message="the worker running the job was lost and the job has no attempt or time left",
            retryable=True,
            attempt=attempts,
        )
        ttl = self._settings.stream_ttl
        token = f"reaper:{secrets.token_hex(8)}"
        args: list[str | int | float] = [
            str(EventType.ERROR),
            failed.model_dump_json(),
            ttl,
            time.time(),
            token,
        ]
        self._finish(keys=keys.job_keys(job_id), args=args)
        if request_key:
            self._connection.expire(request_key, ttl)
        try:
            job = Job.fetch(job_id, connection=self._connection, serializer=self._queue.serializer)
        except NoSuchJobError:
            return
        with self._connection.pipeline() as pipe:
            self._queue.started_job_registry.remove_executions(job, pipeline=pipe)
            job.set_status(JobStatus.FAILED, pipeline=pipe)
            FailedJobRegistry(queue=self._queue).add(
                job, ttl=ttl, exc_string=json.dumps(failed.model_dump(mode="json")), pipeline=pipe
            )
            pipe.execute()
