"""The RQ worker class: up to RANKSTREAM_CONCURRENCY ranking jobs at once in one process.

A ranking waits seconds on the LLM and computes for milliseconds, so one process holds many:
the main thread dequeues a job whenever a slot is free and does RQ's bookkeeping for its start
(the execution, the started registry, the job's status), the job's coroutine runs on the
runtime's event loop, and a few finisher threads record each end in RQ (result, finished or
failed registry) as it comes. A heartbeat thread keeps the worker and every execution alive in
RQ's eyes. It stays an RQ SimpleWorker underneath, so `rq info`, the registries and
rq-dashboard see the worker and each of its jobs.

RQ 3 assumes one job at a time in a few places, overridden here: the worker's state (busy while
any job runs), shutdown (a signal never interrupts the main thread; a warm stop lets the running
jobs finish within RANKSTREAM_SHUTDOWN_GRACE, then ends the rest with their terminal event) and
timeouts (each ranking keeps its own deadlines on the event loop: no SIGALRM).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

import redis
from pydantic import ValidationError
from rq import Queue, SimpleWorker
from rq.command import parse_payload
from rq.exceptions import DequeueTimeout
from rq.executions import Execution
from rq.job import Job
from rq.utils import now
from rq.worker import WorkerStatus

from rankstream.codes import ErrorCode

from . import metrics
from .guard import GuardedJob
from .job import Running, outcome, refuse, request_of
from .leases import Leases
from .ranking import Result
from .runtime import Runtime

log = logging.getLogger("rankstream.worker")

POLL_SECONDS = 1  # longest a free slot waits on the queue before checking for a stop
FINISHERS = 4  # threads recording ends in RQ: a few round trips each, never the bottleneck
HEARTBEAT_SECONDS = 10.0
QUIET_HEARTBEAT_SECONDS = 5.0  # RQ's loop beats after every job; the heartbeat thread suffices


ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]


@dataclass(frozen=True, slots=True)
class _InFlight:
    job: Job
    queue: Queue
    execution: Execution
    running: Running


class RankingWorker(SimpleWorker):
    job_class = GuardedJob

    def __init__(self, queues: list[Queue], *, runtime: Runtime, **kwargs: Any) -> None:
        super().__init__(queues, job_class=GuardedJob, **kwargs)
        self.runtime = runtime
        self.concurrency = runtime.settings.concurrency
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._in_flight: dict[str, _InFlight] = {}  # by execution id
        self._lock = threading.Lock()
        self._finishers = ThreadPoolExecutor(FINISHERS, thread_name_prefix="rankstream-finish")
        self._stopping = threading.Event()
        self._cold = False
        self._beats = threading.Thread(target=self._beat, name="rankstream-heartbeat", daemon=True)
        self._leases = Leases(self.connection, self.queues[0], runtime.settings)
        metrics.worker_slots.set(self.concurrency)

    # --- taking jobs ---------------------------------------------------------------------

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)
        self._beats.start()

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        """The next job once a slot is free; None when stopping (or, in burst mode, when none is left)."""
        self.set_state(WorkerStatus.IDLE)
        waited = 1.0
        while not self._stop_requested:
            if not self._slots.acquire(timeout=POLL_SECONDS):
                continue
            try:
                found = self.queue_class.dequeue_any(
                    self._ordered_queues,
                    None if timeout is None else POLL_SECONDS,
                    connection=self.connection,
                    job_class=self.job_class,
                    serializer=self.serializer,
                    death_penalty_class=self.death_penalty_class,
                )
            except DequeueTimeout:
                self._slots.release()
                self._between_jobs()
                continue
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self._slots.release()
                log.error("cannot dequeue (%s); trying again in %.0f s", exc, waited)
                time.sleep(waited)
                waited = min(waited * 2, 30.0)
                continue
            if found is None:  # burst mode, queue empty
                self._slots.release()
            else:
                self.reorder_queues(reference_queue=found[1])
            return found
        return None

    def _between_jobs(self) -> None:
        if self.should_run_maintenance_tasks:
            self.run_maintenance_tasks()  # type: ignore[no-untyped-call]

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Start the job and return at once: its end is recorded when its coroutine finishes."""
        self._hold_lease(job)  # first: should this process die from here on, a reaper finds the job
        running, failure = self._start(job)  # the LLM request leaves now; RQ's bookkeeping meanwhile
        try:
            execution = self.prepare_execution(job)
        except redis.RedisError as exc:  # RQ cannot record it: the job ends rather than run unseen
            log.error("job %s: RQ could not record its start (%s); ending it", job.id, exc)
            if running is not None:
                running.stop(ErrorCode.INTERNAL)
                running.future.add_done_callback(lambda _: self._slots.release())
            else:
                self._slots.release()
            return
        try:
            self.prepare_job_execution(job, remove_from_intermediate_queue=len(self.queues) == 1)
            job.started_at = now()
        except Exception:
            failure = sys.exc_info()
            if running is not None:
                running.stop(ErrorCode.INTERNAL)
        if running is None or failure is not None:
            self._finishers.submit(self._finish, job, queue, execution, running, failure)
            return
        with self._lock:
            self._in_flight[execution.id] = _InFlight(job, queue, execution, running)
        running.future.add_done_callback(
            lambda _: self._finishers.submit(self._finish, job, queue, execution, running)
        )

    def _hold_lease(self, job: Job) -> None:
        try:
            self._leases.hold([job.id])
        except redis.RedisError as exc:  # the next heartbeat takes it
            log.warning("job %s: no lease yet (%s)", job.id, exc)

    def _start(self, job: Job) -> tuple[Running | None, ExcInfo | None]:
        try:
            job.func  # noqa: B018  GuardedJob refuses anything but the ranking job, before it runs
            return Running.start(self.runtime, job.id, request_of(job)), None
        except ValidationError as exc:
            refuse(self.runtime, job.id, exc)  # a request enqueue() did not make: its stream still ends
            return None, sys.exc_info()
        except Exception:
            return None, sys.exc_info()

    # --- a job's end, in RQ ----------------------------------------------------------------

    def _finish(
        self,
        job: Job,
        queue: Queue,
        execution: Execution,
        running: Running | None,
        failure: ExcInfo | None = None,
    ) -> None:
        """Record the job's end in RQ: its result, or its failure (with the job's error code)."""
        try:
            if failure is None and running is not None:
                try:
                    value = outcome(running.future.result())
                except Exception:
                    failure = sys.exc_info()
                else:
                    self._finalize_success(job, queue, execution, value)
            if failure is not None:
                self._finalize_failure(job, queue, execution, failure)
        except Exception:
            log.exception("job %s: could not record its end in RQ", job.id)
        finally:
            with self._lock:
                self._in_flight.pop(execution.id, None)
                idle = not self._in_flight
            self._slots.release()
            with contextlib.suppress(redis.RedisError):  # else it runs out, and a reaper finds it ended
                self._leases.release(job.id)
            if idle:
                self.set_state(WorkerStatus.IDLE)

    # --- what RQ assumes of one job at a time ----------------------------------------------

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if state == WorkerStatus.IDLE and self._in_flight:
            state = WorkerStatus.BUSY  # RQ sets idle after each dequeue and job; others still run
        super().set_state(state, pipeline)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        recent = (
            self.last_heartbeat is not None
            and (now() - self.last_heartbeat).total_seconds() < QUIET_HEARTBEAT_SECONDS
        )
        if timeout is None and pipeline is None and recent:
            return  # the heartbeat thread keeps the worker alive: no 3 round trips per job
        super().heartbeat(timeout, pipeline)

    def _shutdown(self) -> None:
        # RQ raises StopRequested from the signal handler when it thinks it is idle; with jobs in
        # flight that would cut the main thread short. The dequeue loop checks the flag instead.
        self._stop_requested = True
        self.set_shutdown_requested_date()  # type: ignore[no-untyped-call]

    def handle_payload(self, message: Any) -> None:
        """RQ's commands; `stop-job` names one of our jobs, whichever RQ thinks is "current"."""
        payload = parse_payload(message)
        if payload.get("command") != "stop-job":
            super().handle_payload(message)  # type: ignore[no-untyped-call]
            return
        with self._lock:
            found = [e for e in self._in_flight.values() if e.job.id == payload.get("job_id")]
        for entry in found:
            self.request_stop_execution(entry.execution.id)
        if not found:
            log.warning("not running job %s; stop ignored", payload.get("job_id"))

    def request_stop_execution(self, execution_id: str) -> None:
        """RQ's stop command for one of our jobs: it ends `cancelled` (STOPPED in RQ); the others run on."""
        entry = self._in_flight.get(execution_id)
        if entry is None:
            log.warning("not running execution %s; stop ignored", execution_id)
            return
        self._stopped_job_id = entry.job.id
        entry.running.stop(ErrorCode.CANCELLED)

    # --- heartbeats and shutdown ---------------------------------------------------------

    def _beat(self) -> None:
        """Keep the worker, each execution and each job's lease alive; take over run-out leases."""
        every = min(HEARTBEAT_SECONDS, self._leases.renew_every)
        while not self._stopping.wait(every):
            with self._lock:
                running = list(self._in_flight.values())
            try:
                with self.connection.pipeline(transaction=False) as pipe:
                    self.heartbeat(pipeline=pipe)
                    for entry in running:
                        ttl = self.get_heartbeat_ttl(entry.job)
                        entry.execution.heartbeat(entry.job.started_job_registry, ttl, pipe)
                    self._leases.hold((entry.job.id for entry in running), pipe)
                    pipe.execute()
                self._leases.reap(mine=(entry.job.id for entry in running))
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)

    def unsubscribe(self) -> None:
        """RQ's, with its thread told to stop before the channel is left.

        RQ's pubsub thread waits up to 60 s per read, and redis-py's `stop()` joins it: when the
        thread saw the unsubscribe before its stop flag, it went back to waiting for a
        subscription, and a warm shutdown hung for a minute (found by tests/test_concurrency.py).
        """
        if self.pubsub_thread:
            self.pubsub_thread.stop(timeout=0)  # the flag first; the thread is a daemon
            with contextlib.suppress(redis.RedisError):
                self.pubsub.unsubscribe()
            self.pubsub_thread.join(timeout=1)
            self.pubsub.close()

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        """A second signal: a cold stop, which ends every running job now (teardown does)."""
        self._cold = True
        super().request_force_stop(signum, frame)

    def teardown(self) -> None:
        """Let the running jobs finish within the grace time, then end the rest; then leave RQ."""
        try:
            self._drain(0.0 if self._cold else self.runtime.settings.shutdown_grace)
        except SystemExit:  # the second signal came while we waited: end every job now
            self._end_all()
            raise
        finally:
            self._stopping.set()
            self._finishers.shutdown(wait=True)
            super().teardown()  # type: ignore[no-untyped-call]

    def _drain(self, grace: float) -> None:
        with self._lock:
            running = list(self._in_flight.values())
        if running:
            log.info("waiting up to %.0f s for %d running jobs", grace, len(running))
        _, late = wait([entry.running.future for entry in running], timeout=grace)
        if late:
            log.warning("%d jobs still running after %.0f s: ending them", len(late), grace)
            self._end_all()

    def _end_all(self) -> None:
        with self._lock:
            running = list(self._in_flight.values())
        for entry in running:
            entry.running.stop(ErrorCode.WORKER_LOST)
        futures: list[Future[Result]] = [entry.running.future for entry in running]
        wait(futures, timeout=self.runtime.settings.lease_seconds)
