"""A job's life as a subscriber sees it: watch, cancel, expiry; unknown and expired jobs are told apart."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import redis
from conftest import Simulator, WorkerProcess, finished_stream, make_settings, wait_for

from producer import cancel, enqueue, events
from rankstream import keys
from rankstream.dev import example
from rankstream.exceptions import JobGone, JobNotFound
from rankstream.queue import ranking_queue
from rankstream.settings import Settings


class TestUnknownAndExpiredJobs:
    def test_a_job_that_never_existed_is_not_found(self, settings: Settings) -> None:
        with pytest.raises(JobNotFound):
            next(events(keys.new_job_id(), settings=settings))
        with pytest.raises(JobNotFound):
            next(events("not-a-job-id", settings=settings))

    def test_a_job_older_than_the_ttl_without_keys_is_gone(self, settings: Settings) -> None:
        old = keys.new_job_id(now=1_700_000_000)
        with pytest.raises(JobGone):
            next(events(old, settings=settings))

    def test_a_stream_that_expired_is_gone_not_empty(self, redis_url: str, sim: Simulator) -> None:
        short = make_settings(redis_url, stream_ttl=1)
        worker = WorkerProcess(short, sim, RANKSTREAM_STREAM_TTL="1")
        connection = redis.Redis.from_url(redis_url)
        try:
            handle = enqueue(example.example_request(), settings=short)
            assert finished_stream(connection, handle.job_id)[-1]["type"] == "done"
            wait_for(lambda: not connection.exists(*keys.job_keys(handle.job_id)), 10, "the stream to expire")
        finally:
            worker.stop()

        with pytest.raises(JobGone):
            next(events(handle, settings=short))

    def test_a_queued_job_is_known_before_any_event(self, settings: Settings) -> None:
        handle = enqueue(example.example_request(), settings=settings)
        with pytest.raises(TimeoutError):  # known, waiting: not JobNotFound
            next(events(handle, settings=settings, timeout=0.2, block=0.05))


class TestCancel:
    def test_a_queued_job_ends_cancelled_and_leaves_the_queue(
        self, settings: Settings, connection: redis.Redis
    ) -> None:
        handle = enqueue(example.example_request(), settings=settings)

        assert cancel(handle, settings=settings) is True

        stream = list(events(handle, settings=settings, timeout=5))
        assert [e.type for e in stream] == ["error"]
        assert stream[0].data["code"] == "cancelled"
        assert ranking_queue(connection, settings).count == 0

    def test_a_running_job_stops_its_llm_stream_and_ends_cancelled(
        self, settings: Settings, connection: redis.Redis
    ) -> None:
        slow = Simulator(ttft=0.05, tokens_per_second=15)
        worker = WorkerProcess(settings, slow)
        try:
            handle = enqueue(example.example_request(), settings=settings)
            for event in events(handle, settings=settings, timeout=30):
                if event.type == "item":
                    assert cancel(handle, settings=settings) is False  # running: asked, not yet ended
                    break
            stream = finished_stream(connection, handle.job_id)
            llm = wait_for(
                lambda: [r for r in slow.requests() if r["client_closed"]], 10, "the LLM stream to close"
            )
        finally:
            worker.stop()
            slow.stop()

        assert stream[-1]["type"] == "error" and stream[-1]["code"] == "cancelled"
        assert len([e for e in stream if e["type"] == "item"]) < 10
        assert llm[-1]["tokens_sent"] < llm[-1]["tokens_planned"]

    def test_cancelling_an_unknown_job_raises(self, settings: Settings) -> None:
        with pytest.raises(JobNotFound):
            cancel(keys.new_job_id(), settings=settings)


class TestWatchCommand:
    def test_prints_every_event_as_a_json_line_and_exits_after_the_terminal_one(
        self, worker: WorkerProcess, module_settings: Settings
    ) -> None:
        handle = enqueue(example.example_request(), settings=module_settings)
        env = {**os.environ, "REDIS_URL": module_settings.redis_url or ""}
        result = subprocess.run(
            [sys.executable, "-m", "rankstream", "watch", handle.job_id],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert [e["type"] for e in lines] == ["started"] + ["item"] * 10 + ["done"]

    def test_an_unknown_job_exits_non_zero(self, settings: Settings) -> None:
        env = {**os.environ, "REDIS_URL": settings.redis_url or ""}
        result = subprocess.run(
            [sys.executable, "-m", "rankstream", "watch", keys.new_job_id()],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0
        assert "no job" in result.stderr


class TestRequestIdLifetime:
    def test_a_request_id_is_remembered_as_long_as_its_stream(
        self, worker: WorkerProcess, module_settings: Settings, connection: redis.Redis
    ) -> None:
        handle = enqueue(example.example_request(request_id="order-7"), settings=module_settings)
        finished_stream(connection, handle.job_id)

        stream_ttl = connection.pttl(keys.events(handle.job_id))
        request_ttl = connection.pttl(keys.request("order-7"))
        assert abs(stream_ttl - request_ttl) < 2000
        again = enqueue(example.example_request(request_id="order-7"), settings=module_settings)
        assert again == handle
