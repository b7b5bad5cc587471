"""The producer's two shells: the same answers from the synchronous calls and from asyncio.

One core (producer/core.py) decides; `producer` (sync) and `producer.aio` do the I/O. Settings
and the Redis pool are made once per process and shared by every call, also after a fork.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from typing import Any

import pytest
import redis
from conftest import WorkerProcess, finished_stream

import producer
from producer import aio
from rankstream import InvalidRequest, JobGone, JobNotFound, keys
from rankstream.connections import connect
from rankstream.dev import example
from rankstream.settings import Settings, get_settings


class TestStatus:
    def test_a_queued_job_is_queued_with_no_items(self, settings: Settings) -> None:
        handle = producer.enqueue(example.example_request(), settings=settings)
        status = producer.status(handle, settings=settings)
        assert (status.job_id, status.status, status.items, status.timings) == (
            handle.job_id,
            "queued",
            [],
            None,
        )

    def test_a_finished_job_has_its_items_in_rank_order_and_its_timings(
        self, worker: WorkerProcess, module_settings: Settings, connection: redis.Redis
    ) -> None:
        handle = producer.enqueue(example.example_request(), settings=module_settings)
        finished_stream(connection, handle.job_id)

        status = producer.status(handle, settings=module_settings)
        assert status.status == "done"
        assert [item["rank"] for item in status.items] == list(range(1, 11))
        assert status.timings is not None and status.timings.first_item is not None
        assert asyncio.run(aio.status(handle, settings=module_settings)) == status

    def test_a_job_that_ended_in_error_says_why(self, settings: Settings) -> None:
        handle = producer.enqueue(example.example_request(), settings=settings)
        producer.cancel(handle, settings=settings)
        status = producer.status(handle, settings=settings)
        assert status.status == "error" and status.error is not None and status.error.code == "cancelled"

    def test_unknown_and_expired_jobs_raise_in_both_shells(self, settings: Settings) -> None:
        unknown = keys.new_job_id()
        expired = keys.new_job_id(now=1.0)
        for job_id, error in ((unknown, JobNotFound), (expired, JobGone)):
            with pytest.raises(error):
                producer.status(job_id, settings=settings)
            with pytest.raises(error):
                asyncio.run(aio.status(job_id, settings=settings))


class TestAsyncioShell:
    def test_events_yields_what_the_sync_generator_yields(
        self, worker: WorkerProcess, module_settings: Settings
    ) -> None:
        async def collect() -> tuple[str, list[Any]]:
            handle = await aio.enqueue(example.example_request(), settings=module_settings)
            return handle.job_id, [event async for event in aio.events(handle, settings=module_settings)]

        job_id, async_events = asyncio.run(collect())
        sync_events = list(producer.events(job_id, settings=module_settings, timeout=10))
        assert async_events == sync_events
        assert [e.type for e in async_events][-1] == "done"

    def test_events_resume_after_an_entry_id(self, worker: WorkerProcess, module_settings: Settings) -> None:
        handle = producer.enqueue(example.example_request(), settings=module_settings)
        every = list(producer.events(handle, settings=module_settings, timeout=30))

        async def resume() -> list[Any]:
            return [e async for e in aio.events(handle, after=every[3].id, settings=module_settings)]

        assert asyncio.run(resume()) == every[4:]

    def test_a_refused_request_and_a_cancel_behave_as_in_the_sync_shell(self, settings: Settings) -> None:
        async def run() -> bool:
            with pytest.raises(InvalidRequest):
                await aio.enqueue({"products": []}, settings=settings)
            handle = await aio.enqueue(example.example_request(), settings=settings)
            return await aio.cancel(handle, settings=settings)

        assert asyncio.run(run()) is True


class TestOneClientPerProcess:
    def test_settings_and_the_pool_are_made_once(self, settings: Settings) -> None:
        assert get_settings() is get_settings()
        assert connect(settings) is connect(settings)
        before = connect(settings).connection_pool
        for _ in range(20):
            producer.enqueue(example.example_request(), settings=settings)
        assert connect(settings).connection_pool is before
        assert len(before._available_connections) == 1  # one connection served every call

    def test_a_forked_child_enqueues_on_a_connection_of_its_own(self, settings: Settings) -> None:
        parent = producer.enqueue(example.example_request(), settings=settings)
        context = multiprocessing.get_context("fork")
        with context.Pool(1) as pool:
            child_job_id = pool.apply(_enqueue_in_child, (settings,))
        assert child_job_id != parent.job_id
        assert producer.status(child_job_id, settings=settings).status == "queued"
        producer.enqueue(example.example_request(), settings=settings)  # the parent's pool still works


def _enqueue_in_child(settings: Settings) -> str:
    return producer.enqueue(example.example_request(), settings=settings).job_id
