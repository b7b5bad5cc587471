"""Bad LLM output is skipped, counted and reported; LLM failures are retried; every stream ends once.

One simulator and one worker with short timeouts; each test switches a fault on for the next
request(s) through the simulator's /sim/faults.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from conftest import (
    Simulator,
    WorkerProcess,
    assert_complete_ranking,
    finished_stream,
    items,
    make_settings,
    ranked_with_fault,
)
from rq import Queue
from rq.job import Job

from producer import enqueue
from rankstream import keys, scripts
from rankstream.dev import example
from rankstream.queue import SERIALIZER, ranking_queue
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
    yield functools.partial(ranked_with_fault, sim, fault_settings, connection)
    sim.fault("none")


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
        assert all(i["source"] == "llm" for i in items(stream))  # matched, not filled in from the catalogue
        assert [e["attempt"] for e in stream if e["type"] == "started"] == [1]  # no retry
        assert stream[-1]["rejected"] == {"invalid": 0, "truncated": 0, "unknown_id": 0, "duplicate": 0}

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


class TestARetryContinuesTheRanking:
    def test_the_retry_asks_only_for_the_candidates_not_yet_published(self, run: Any, sim: Simulator) -> None:
        asked_before = len(sim.requests())
        stream = run("disconnect")

        first, second = (r["candidates"] for r in sim.requests()[asked_before:])
        retry_at = [n for n, e in enumerate(stream) if e["type"] == "started"][1]
        before_retry = {e["product_id"] for e in stream[:retry_at] if e["type"] == "item"}
        assert first == [str(n) for n in range(1, 11)]
        assert before_retry and second == [p for p in first if p not in before_retry]
        assert stream[-1]["rejected"]["duplicate"] == 0  # the earlier attempt's products are no rejects
        assert_complete_ranking(stream)

    def test_top_k_reached_by_an_earlier_attempt_ends_the_job_without_asking_again(
        self, fault_worker: WorkerProcess, fault_settings: Settings, sim: Simulator, connection: redis.Redis
    ) -> None:
        # Another worker's attempt published two items and died: the job is taken up again.
        queue = Queue(f"{fault_settings.queue}-parked", connection=connection, serializer=SERIALIZER)
        parked = fault_settings.model_copy(update={"queue": queue.name})
        handle = enqueue(example.example_request(top_k=2), settings=parked)
        publish = connection.register_script(scripts.PUBLISH_ITEM)
        for rank, product_id in enumerate(("3", "1"), 1):
            body = f'"product_id":"{product_id}","product_name":"p","source":"llm"}}'
            assert publish(
                keys=keys.job_keys(handle.job_id), args=[product_id, body, 60, time.time(), 1]
            ) == [rank]
        asked_before = len(sim.requests())

        queue.remove(handle.job_id)
        ranking_queue(connection, fault_settings).enqueue_job(
            Job.fetch(handle.job_id, connection=connection, serializer=SERIALIZER)
        )
        stream = finished_stream(connection, handle.job_id)

        assert len(sim.requests()) == asked_before
        assert stream[-1]["type"] == "done" and stream[-1]["count"] == 2


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
