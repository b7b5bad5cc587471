"""Many live streams per worker process: up to RANKSTREAM_CONCURRENCY jobs at once, each on its own.

One worker process with concurrency 8 and a simulator paced so that a job lasts about a second:
every stream is complete, no more than 8 run at once (RQ's started registry says so too), one
job's trouble or cancel touches no other, a warm shutdown lets the running jobs finish, and
RQ's own tools see the worker and its jobs.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import (
    Simulator,
    WorkerProcess,
    assert_complete_ranking,
    finished_stream,
    make_settings,
    streaming,
    wait_for,
)
from rq import Worker
from rq.command import send_stop_job_command
from rq.job import Job, JobStatus
from rq.registry import FinishedJobRegistry, StartedJobRegistry

from producer import cancel, enqueue
from rankstream.dev import example
from rankstream.queue import SERIALIZER, ranking_queue
from rankstream.settings import Settings

SLOTS = 8


@pytest.fixture(scope="module")
def paced_sim() -> Iterator[Simulator]:
    simulator = Simulator(ttft=0.2, tokens_per_second=60)  # about a second per job
    yield simulator
    simulator.stop()


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return make_settings(redis_url)


@pytest.fixture
def worker(settings: Settings, paced_sim: Simulator) -> Iterator[WorkerProcess]:
    process = WorkerProcess(
        settings, paced_sim, RANKSTREAM_CONCURRENCY=str(SLOTS), RANKSTREAM_IDLE_TIMEOUT="0.5"
    )
    yield process
    process.stop()


class Watcher:
    """Samples, until stopped, the most jobs RQ's started registry held at once."""

    def __init__(self, connection: redis.Redis, settings: Settings) -> None:
        self.registry = StartedJobRegistry(queue=ranking_queue(connection, settings))
        self.most = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(0.02):
            self.most = max(self.most, len(self.registry.get_job_ids(cleanup=False)))

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.most


class TestManyJobsAtOnce:
    def test_24_jobs_on_8_slots_all_finish_complete_never_more_than_8_at_once(
        self, worker: WorkerProcess, settings: Settings, connection: redis.Redis
    ) -> None:
        watcher = Watcher(connection, settings)
        handles = [enqueue(example.example_request(), settings=settings) for _ in range(24)]
        streams = [finished_stream(connection, h.job_id) for h in handles]
        most = watcher.stop()

        for stream in streams:
            assert_complete_ranking(stream)
        assert most == SLOTS  # all slots were used, and never more
        finished = FinishedJobRegistry(queue=ranking_queue(connection, settings))
        assert wait_for(lambda: len(finished.get_job_ids()) == 24, 10, "RQ to record every result")

    def test_jobs_overlap_rather_than_queue_behind_each_other(
        self, worker: WorkerProcess, settings: Settings, connection: redis.Redis
    ) -> None:
        started = time.monotonic()
        handles = [enqueue(example.example_request(), settings=settings) for _ in range(SLOTS)]
        for handle in handles:
            finished_stream(connection, handle.job_id)
        alone = _one_job_seconds(settings, connection)
        assert time.monotonic() - started < 3 * alone  # eight at once, not eight in a row


def _one_job_seconds(settings: Settings, connection: redis.Redis) -> float:
    started = time.monotonic()
    finished_stream(connection, enqueue(example.example_request(), settings=settings).job_id)
    return time.monotonic() - started


class TestOneJobTouchesNoOther:
    def test_a_stalled_llm_stream_delays_only_its_own_job(
        self, worker: WorkerProcess, settings: Settings, paced_sim: Simulator, connection: redis.Redis
    ) -> None:
        paced_sim.fault("stall", 1)  # the next request goes silent half way
        stalled = enqueue(example.example_request(), settings=settings)
        wait_for(lambda: any(r["fault"] == "stall" for r in paced_sim.requests()), 10, "the stalled request")
        others = [enqueue(example.example_request(), settings=settings) for _ in range(SLOTS - 1)]

        stalled_stream = finished_stream(connection, stalled.job_id)
        other_streams = [finished_stream(connection, h.job_id) for h in others]

        assert [e["attempt"] for e in stalled_stream if e["type"] == "started"] == [1, 2]
        assert_complete_ranking(stalled_stream)
        stalled_total = stalled_stream[-1]["timings"]["total"]
        for stream in other_streams:
            assert_complete_ranking(stream)
            assert [e["attempt"] for e in stream if e["type"] == "started"] == [1]
            assert stream[-1]["timings"]["total"] < stalled_total  # nobody waited for the stalled one

    def test_a_failing_llm_call_fails_only_its_own_attempt(
        self, worker: WorkerProcess, settings: Settings, paced_sim: Simulator, connection: redis.Redis
    ) -> None:
        paced_sim.fault("server_error", 1)
        handles = [enqueue(example.example_request(), settings=settings) for _ in range(SLOTS)]
        streams = [finished_stream(connection, h.job_id) for h in handles]

        attempts = sorted(len([e for e in s if e["type"] == "started"]) for s in streams)
        assert attempts == [1] * (SLOTS - 1) + [2]
        for stream in streams:
            assert_complete_ranking(stream)

    def test_cancelling_one_of_8_running_jobs_ends_only_that_one(
        self, worker: WorkerProcess, settings: Settings, connection: redis.Redis
    ) -> None:
        handles = [enqueue(example.example_request(), settings=settings) for _ in range(SLOTS)]
        wait_for(lambda: streaming(connection, [h.job_id for h in handles]), 10, "all eight to stream")
        cancel(handles[3], settings=settings)

        streams = [finished_stream(connection, h.job_id) for h in handles]
        assert streams[3][-1]["type"] == "error" and streams[3][-1]["code"] == "cancelled"
        for stream in streams[:3] + streams[4:]:
            assert_complete_ranking(stream)

    def test_rqs_stop_job_command_stops_only_that_job(
        self, worker: WorkerProcess, settings: Settings, connection: redis.Redis
    ) -> None:
        handles = [enqueue(example.example_request(), settings=settings) for _ in range(SLOTS)]
        wait_for(lambda: streaming(connection, [h.job_id for h in handles]), 10, "all eight to stream")
        send_stop_job_command(connection, handles[5].job_id, serializer=SERIALIZER)

        streams = [finished_stream(connection, h.job_id) for h in handles]
        assert streams[5][-1]["type"] == "error" and streams[5][-1]["code"] == "cancelled"
        stopped = Job.fetch(handles[5].job_id, connection=connection, serializer=SERIALIZER)
        assert wait_for(
            lambda: stopped.get_status(refresh=True) == JobStatus.STOPPED, 10, "RQ to say STOPPED"
        )
        for stream in streams[:5] + streams[6:]:
            assert_complete_ranking(stream)


class TestShutdown:
    def test_a_warm_shutdown_lets_the_8_running_jobs_finish(
        self, settings: Settings, paced_sim: Simulator, connection: redis.Redis
    ) -> None:
        worker = WorkerProcess(settings, paced_sim, RANKSTREAM_CONCURRENCY=str(SLOTS))
        handles = [enqueue(example.example_request(), settings=settings) for _ in range(SLOTS + 2)]
        wait_for(lambda: streaming(connection, [h.job_id for h in handles[:SLOTS]]), 10, "eight to stream")
        worker.process.send_signal(signal.SIGTERM)

        try:
            assert worker.process.wait(timeout=30) == 0
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the worker did not stop: {worker.stop()}") from None
        for handle in handles[:SLOTS]:
            assert_complete_ranking(finished_stream(connection, handle.job_id))
        assert ranking_queue(connection, settings).count == 2  # the queue kept what was not taken
        assert Worker.count(queue=ranking_queue(connection, settings)) == 0
        worker.stop()

    def test_jobs_still_running_after_the_grace_end_with_a_terminal_event(
        self, settings: Settings, connection: redis.Redis
    ) -> None:
        slow = Simulator(ttft=0.05, tokens_per_second=10)  # about six seconds a job
        worker = WorkerProcess(settings, slow, RANKSTREAM_CONCURRENCY="4", RANKSTREAM_SHUTDOWN_GRACE="0.5")
        try:
            handles = [enqueue(example.example_request(), settings=settings) for _ in range(4)]
            wait_for(lambda: streaming(connection, [h.job_id for h in handles]), 10, "four to stream")
            worker.process.send_signal(signal.SIGTERM)
            assert worker.process.wait(timeout=30) == 0
            streams = [finished_stream(connection, h.job_id) for h in handles]
        finally:
            worker.stop()
            slow.stop()
        for stream in streams:
            assert stream[-1]["type"] == "error" and stream[-1]["code"] == "worker_lost"
            assert stream[-1]["retryable"] is True

    def test_a_second_signal_ends_every_running_job_at_once_with_its_event(
        self, settings: Settings, connection: redis.Redis
    ) -> None:
        slow = Simulator(ttft=0.05, tokens_per_second=10)  # about six seconds a job
        worker = WorkerProcess(settings, slow, RANKSTREAM_CONCURRENCY="4", RANKSTREAM_SHUTDOWN_GRACE="60")
        try:
            handles = [enqueue(example.example_request(), settings=settings) for _ in range(4)]
            wait_for(lambda: streaming(connection, [h.job_id for h in handles]), 10, "four to stream")
            worker.process.send_signal(signal.SIGTERM)
            time.sleep(1.1)  # not a guess: RQ ignores a second signal within a second of the first
            worker.process.send_signal(signal.SIGTERM)
            worker.process.wait(timeout=20)  # well inside the 60 s grace: the cold stop did not wait
            streams = [finished_stream(connection, h.job_id) for h in handles]
        finally:
            worker.stop()
            slow.stop()
        for stream in streams:
            assert stream[-1]["type"] == "error" and stream[-1]["code"] == "worker_lost"


class TestRQSeesTheTruth:
    def test_rq_info_shows_the_worker_busy_with_its_8_running_jobs_then_their_results(
        self, worker: WorkerProcess, settings: Settings, connection: redis.Redis
    ) -> None:
        handles = [enqueue(example.example_request(), settings=settings) for _ in range(SLOTS)]
        wait_for(lambda: streaming(connection, [h.job_id for h in handles]), 10, "eight to stream")
        during = rq_info(settings)
        for handle in handles:
            finished_stream(connection, handle.job_id)
        name = Worker.all(queue=ranking_queue(connection, settings))[0].name

        assert f"queue {settings.queue} 0, {SLOTS} executing, 0 finished, 0 failed" in during
        assert f"worker {name} " in during and f") busy {settings.queue}." in during
        after = wait_for(lambda: _shows_finished(settings), 10, "rq info to show the results")
        assert f") idle {settings.queue}. jobs: {SLOTS} finished, 0 failed" in after


def rq_info(settings: Settings) -> str:
    rq = Path(sys.executable).parent / "rq"
    shown = subprocess.run(
        [str(rq), "info", "--url", settings.redis_url or "", "--serializer", "json", "--raw", settings.queue],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def _shows_finished(settings: Settings) -> str | None:
    shown = rq_info(settings)
    return shown if f"0 executing, {SLOTS} finished" in shown and ") idle " in shown else None
