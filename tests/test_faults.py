"""Bad LLM output is skipped, counted and reported; LLM failures are retried; every stream ends once.

One simulator and one worker with short timeouts; each test switches a fault on for the next
request(s) through the simulator's /sim/faults.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from conftest import Simulator, WorkerProcess, finished_stream, make_settings

from producer import enqueue
from rankstream.dev import example
from rankstream.settings import Settings


@pytest.fixture(scope="module")
def fault_settings(redis_url: str) -> Settings:
    return make_settings(redis_url)


@pytest.fixture(scope="module")
def fault_worker(fault_settings: Settings, sim: Simulator) -> Iterator[WorkerProcess]:
    process = WorkerProcess(
        fault_settings,
        sim,
        RANKSTREAM_FIRST_TOKEN_TIMEOUT="1",
        RANKSTREAM_IDLE_TIMEOUT="0.5",
        RANKSTREAM_MAX_ATTEMPTS="3",
    )
    yield process
    process.stop()


@pytest.fixture
def run(
    fault_worker: WorkerProcess, fault_settings: Settings, sim: Simulator, connection: redis.Redis
) -> Iterator[Any]:
    def run_with(fault: str, count: int | None = 1, **overrides: object) -> list[dict[str, Any]]:
        sim.fault(fault, count)
        handle = enqueue(example.example_request(**overrides), settings=fault_settings)
        return finished_stream(connection, handle.job_id)

    yield run_with
    sim.fault("none")


def items(stream: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in stream if e["type"] == "item"]


def assert_complete_ranking(stream: list[dict[str, Any]]) -> None:
    ranked = items(stream)
    assert [i["rank"] for i in ranked] == list(range(1, 11))
    assert sorted(i["product_id"] for i in ranked) == sorted(str(n) for n in range(1, 11))
    assert stream[-1]["type"] == "done" and stream[-1]["count"] == 10


class TestBadOutputIsSkippedCountedAndReported:
    def test_garbage_elements_are_rejected_by_reason_and_the_rest_published(self, run: Any) -> None:
        stream = run("garbage")

        assert_complete_ranking(stream)
        assert all(i["source"] == "llm" for i in items(stream))
        assert stream[-1]["rejected"] == {"invalid": 2, "truncated": 0, "unknown_id": 1, "duplicate": 1}

    def test_ids_written_as_numbers_match_the_catalogue(self, run: Any) -> None:
        stream = run("numeric_ids")

        assert_complete_ranking(stream)
        assert all(isinstance(i["product_id"], str) for i in items(stream))

    def test_a_truncated_answer_counts_the_cut_element_and_fills_from_the_catalogue(self, run: Any) -> None:
        stream = run("truncate")

        assert_complete_ranking(stream)
        sources = [i["source"] for i in items(stream)]
        assert "fallback" in sources and sources[0] == "llm"
        assert sources == sorted(sources, key=lambda s: s == "fallback")  # the LLM's first, then the rest
        assert stream[-1]["rejected"]["truncated"] == 1


class TestLLMFailuresAreRetried:
    def test_rate_limit_is_retried_after_the_servers_retry_after(self, run: Any) -> None:
        stream = run("rate_limit")

        started = [e for e in stream if e["type"] == "started"]
        assert [s["attempt"] for s in started] == [1, 2]
        gap_ms = int(started[1]["id"].split("-")[0]) - int(started[0]["id"].split("-")[0])
        assert gap_ms >= 1000  # the simulator says Retry-After: 1
        assert_complete_ranking(stream)

    def test_server_error_is_retried(self, run: Any) -> None:
        stream = run("server_error")
        assert [e["attempt"] for e in stream if e["type"] == "started"] == [1, 2]
        assert_complete_ranking(stream)

    def test_a_dropped_connection_resumes_without_repeating_a_product(self, run: Any) -> None:
        stream = run("disconnect")

        started_at = [n for n, e in enumerate(stream) if e["type"] == "started"]
        assert len(started_at) == 2
        assert any(e["type"] == "item" for e in stream[: started_at[1]]), (
            "nothing was published before the drop"
        )
        assert_complete_ranking(stream)

    def test_a_stalled_stream_hits_the_idle_timeout_and_is_retried(self, run: Any) -> None:
        stream = run("stall")
        assert [e["attempt"] for e in stream if e["type"] == "started"] == [1, 2]
        assert_complete_ranking(stream)

    def test_no_first_token_hits_the_first_token_timeout_and_is_retried(self, run: Any) -> None:
        stream = run("slow_first_token")
        assert [e["attempt"] for e in stream if e["type"] == "started"] == [1, 2]
        assert_complete_ranking(stream)

    def test_a_lasting_failure_gives_up_after_max_attempts_with_one_error(self, run: Any) -> None:
        stream = run("server_error", None)

        assert [e["attempt"] for e in stream if e["type"] == "started"] == [1, 2, 3]
        error = stream[-1]
        assert error["type"] == "error"
        assert error["code"] == "llm_unavailable" and error["retryable"] is True and error["attempt"] == 3
        assert not items(stream)


class TestDeadlines:
    def test_a_job_past_its_timeout_ends_with_one_timeout_error(
        self, redis_url: str, connection: redis.Redis
    ) -> None:
        settings = make_settings(redis_url)
        slow = Simulator(ttft=0.05, tokens_per_second=10)  # ten items would take about six seconds
        worker = WorkerProcess(settings, slow, RANKSTREAM_JOB_TIMEOUT="1.5")
        try:
            handle = enqueue(example.example_request(), settings=settings)
            stream = finished_stream(connection, handle.job_id)
        finally:
            worker.stop()
            slow.stop()

        error = stream[-1]
        assert error["type"] == "error" and error["code"] == "timeout"
        assert 0 < len(items(stream)) < 10
