"""The example, end to end through real processes: producer -> RQ -> worker -> LLM -> stream."""

from __future__ import annotations

import time

import redis
from conftest import Simulator, WorkerProcess, wait_for

from producer import enqueue, events
from rankstream.dev import example
from rankstream.models import Event
from rankstream.settings import Settings


def run_example(settings: Settings, **overrides: object) -> list[Event]:
    handle = enqueue(example.example_request(**overrides), settings=settings)
    return list(events(handle, settings=settings, timeout=30))


class TestTheExample:
    def test_streams_started_ten_ranked_items_then_done(
        self, worker: WorkerProcess, module_settings: Settings
    ) -> None:
        stream = run_example(module_settings)

        assert [e.type for e in stream] == ["started"] + ["item"] * 10 + ["done"]
        assert stream[0].data["attempt"] == 1
        items = [e.data for e in stream if e.type == "item"]
        assert [i["rank"] for i in items] == list(range(1, 11))
        assert sorted(i["product_id"] for i in items) == sorted(str(n) for n in range(1, 11))
        catalogue = example.example_request().catalogue()
        assert all(i["product_name"] == catalogue[i["product_id"]] for i in items)
        assert all(i["source"] == "llm" for i in items)
        assert items[0]["product_id"] == "1"  # the simulator's heuristic: MacBook Air first

    def test_done_reports_count_rejections_and_timings(
        self, worker: WorkerProcess, module_settings: Settings
    ) -> None:
        done = run_example(module_settings)[-1].data

        assert done["count"] == 10
        assert done["rejected"] == {"invalid": 0, "truncated": 0, "unknown_id": 0, "duplicate": 0}
        timings = done["timings"]
        assert (
            0 <= timings["queue_wait"] <= timings["first_token"] <= timings["first_item"] <= timings["total"]
        )
        assert done["usage"]["completion_tokens"] > 0

    def test_top_k_stops_after_k_items_and_stops_the_llm(self, settings: Settings) -> None:
        slow = Simulator(ttft=0.05, tokens_per_second=40)  # slow enough that the stop beats the answer's end
        worker = WorkerProcess(settings, slow)
        try:
            stream = run_example(settings, top_k=3)
            llm = wait_for(
                lambda: [r for r in slow.requests() if r["finished_at"]], 10, "the LLM call to end"
            )[-1]
        finally:
            worker.stop()
            slow.stop()

        assert [e.type for e in stream] == ["started", "item", "item", "item", "done"]
        assert llm["client_closed"] and llm["tokens_sent"] < llm["tokens_planned"]


class TestStreaming:
    def test_first_item_reaches_a_watcher_while_the_llm_is_still_sending(self, settings: Settings) -> None:
        slow = Simulator(ttft=0.1, tokens_per_second=20)  # about three seconds of tokens
        worker = WorkerProcess(settings, slow)
        try:
            handle = enqueue(example.example_request(), settings=settings)
            first_item_seen = None
            for event in events(handle, settings=settings, timeout=30):
                if event.type == "item" and first_item_seen is None:
                    first_item_seen = time.time()
            llm = slow.requests()[-1]
        finally:
            worker.stop()
            slow.stop()

        assert first_item_seen is not None
        assert llm["completed"]
        assert first_item_seen < llm["finished_at"] - 1.0, "the first item waited for the whole answer"


class TestKeys:
    def test_every_key_of_a_job_carries_its_id_as_a_hash_tag(
        self, worker: WorkerProcess, module_settings: Settings, connection: redis.Redis
    ) -> None:
        handle = enqueue(example.example_request(request_id="tagged-1"), settings=module_settings)
        list(events(handle, settings=module_settings, timeout=30))

        ours = [k.decode() for k in connection.scan_iter(f"rankstream:*{handle.job_id}*")]
        assert len(ours) == 3  # events, state, published
        assert all(f"{{{handle.job_id}}}" in key for key in ours)
