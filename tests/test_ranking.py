"""A ranking stopped from outside (RQ's timeout, a shutdown) still ends its stream, with the stop's code."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from conftest import Simulator, finished_stream, make_settings, wait_for

from producer import enqueue
from rankstream import keys
from rankstream.codes import ErrorCode
from rankstream.dev import example
from worker.job import Running
from worker.runtime import Runtime


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[Simulator]:
    simulator = Simulator(tokens_per_second=40)  # ten items take about three seconds
    yield simulator
    simulator.stop()


@pytest.fixture
def runtime(redis_url: str, slow_sim: Simulator) -> Iterator[Runtime]:
    # No worker serves this queue: the test runs the job's coroutine itself.
    built = Runtime(make_settings(redis_url, openai_base_url=slow_sim.base_url))
    yield built
    built.close()


class TestStoppedFromOutside:
    def test_a_stop_before_the_first_step_ends_the_stream_with_its_code(
        self, runtime: Runtime, connection: redis.Redis
    ) -> None:
        handle = enqueue(example.example_request(), settings=runtime.settings)
        runtime.loop.call_soon_threadsafe(time.sleep, 0.1)  # the loop is busy when the job is handed over
        running = Running.start(runtime, handle.job_id, example.example_request().model_dump(mode="json"))
        running.abort(ErrorCode.WORKER_LOST)

        stream = finished_stream(connection, handle.job_id)
        assert [e["type"] for e in stream] == ["error"]
        assert stream[-1]["code"] == "worker_lost"

    def test_a_stop_mid_stream_ends_it_with_no_item_after_the_error(
        self, runtime: Runtime, connection: redis.Redis
    ) -> None:
        handle = enqueue(example.example_request(), settings=runtime.settings)
        running = Running.start(runtime, handle.job_id, example.example_request().model_dump(mode="json"))

        def published() -> int:
            return sum(
                fields[b"type"] == b"item" for _, fields in connection.xrange(keys.events(handle.job_id))
            )

        wait_for(published, 10, "the first item")
        running.abort(ErrorCode.TIMEOUT)

        stream = finished_stream(connection, handle.job_id)
        assert stream[-1]["type"] == "error" and stream[-1]["code"] == "timeout"
        assert 0 < len([e for e in stream if e["type"] == "item"]) < 10
        assert running.future.result(timeout=5).error is not None
