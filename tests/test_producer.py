"""The producer's two shells: the same answers from the synchronous calls and from asyncio.

One core (producer/core.py) decides; `producer` (sync) and `producer.aio` do the I/O. Settings
and the Redis pool are made once per process and shared by every call, also after a fork; an
asyncio client lives as long as its event loop, and no longer.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from conftest import Simulator, WorkerProcess, finished_stream, make_settings, wait_for

import producer
from producer import aio
from rankstream import InvalidRequest, JobGone, JobNotFound, connections, keys, scripts
from rankstream.connections import connect
from rankstream.dev import example
from rankstream.dev.redis_server import RedisServer
from rankstream.models import Event, JobStatus
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

    def test_a_terminal_event_decides_the_status_whatever_the_state_says(
        self, settings: Settings, connection: redis.Redis
    ) -> None:
        handle = producer.enqueue(example.example_request(), settings=settings)
        producer.cancel(handle, settings=settings)
        connection.hset(keys.state(handle.job_id), "status", "running")  # a state that says otherwise

        status = both_shells_status(handle.job_id, settings)
        assert status.status == "error" and status.error is not None and status.error.code == "cancelled"

    @pytest.mark.parametrize("ending", ["running", "error", "done"])
    def test_a_job_whose_state_says_it_started_but_whose_stream_is_gone_is_gone(
        self, ending: str, settings: Settings, connection: redis.Redis
    ) -> None:
        handle = producer.enqueue(example.example_request(), settings=settings)
        start(connection, handle.job_id, settings)
        if ending != "running":
            finish(connection, handle.job_id, ending, settings)
        connection.delete(keys.events(handle.job_id))  # the stream expired first

        for shell_status in (producer.status, lambda job, **kw: asyncio.run(aio.status(job, **kw))):
            with pytest.raises(JobGone):
                shell_status(handle.job_id, settings=settings)

    def test_a_running_job_without_its_state_is_read_from_its_stream(
        self, settings: Settings, connection: redis.Redis
    ) -> None:
        handle = producer.enqueue(example.example_request(), settings=settings)
        start(connection, handle.job_id, settings)
        connection.delete(keys.state(handle.job_id))

        status = both_shells_status(handle.job_id, settings)
        assert (status.status, status.items, status.timings, status.error) == ("running", [], None, None)

    def test_a_finished_job_without_its_state_is_read_from_its_stream(
        self, worker: WorkerProcess, module_settings: Settings, connection: redis.Redis
    ) -> None:
        handle = producer.enqueue(example.example_request(), settings=module_settings)
        finished_stream(connection, handle.job_id)
        connection.delete(keys.state(handle.job_id))

        status = both_shells_status(handle.job_id, module_settings)
        assert status.status == "done" and len(status.items) == 10
        assert status.timings is not None and status.timings.first_item is not None

    def test_unknown_and_expired_jobs_raise_in_both_shells(self, settings: Settings) -> None:
        unknown = keys.new_job_id()
        expired = keys.new_job_id(now=1.0)
        for job_id, error in ((unknown, JobNotFound), (expired, JobGone)):
            with pytest.raises(error):
                producer.status(job_id, settings=settings)
            with pytest.raises(error):
                asyncio.run(aio.status(job_id, settings=settings))


def both_shells_status(job_id: str, settings: Settings) -> JobStatus:
    """The job's status, asserted to be the same from the synchronous and the asyncio shell."""
    status = producer.status(job_id, settings=settings)
    assert asyncio.run(aio.status(job_id, settings=settings)) == status
    return status


def start(connection: redis.Redis, job_id: str, settings: Settings) -> None:
    """What a worker does when it picks the job up: its state says running, its stream `started`."""
    start_script = connection.register_script(scripts.START)
    start_script(keys=keys.job_keys(job_id), args=[settings.stream_ttl, job_id, "m", time.time(), "test"])


def finish(connection: redis.Redis, job_id: str, ending: str, settings: Settings) -> None:
    """What a worker does when the job ends: the terminal event, and the state says so."""
    data = (
        '{"count": 0, "rejected": {}, "timings": {}}'
        if ending == "done"
        else json.dumps({"code": "internal", "message": "test", "retryable": False, "attempt": 1})
    )
    finish_script = connection.register_script(scripts.FINISH)
    finish_script(keys=keys.job_keys(job_id), args=[ending, data, settings.stream_ttl, time.time(), "test"])


class TestCancel:
    def test_cancelling_a_job_whose_state_is_gone_recreates_nothing(
        self, settings: Settings, connection: redis.Redis
    ) -> None:
        handle = producer.enqueue(example.example_request(), settings=settings)
        connection.xadd(keys.events(handle.job_id), {"type": "started", "data": "{}"})  # its stream lives on
        connection.delete(keys.state(handle.job_id))

        assert producer.cancel(handle, settings=settings) is False
        assert not connection.exists(keys.state(handle.job_id))


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
        producer.enqueue(example.example_request(), settings=settings)
        made = before._created_connections  # earlier tests of this process may have made some
        for _ in range(20):
            producer.enqueue(example.example_request(), settings=settings)
        assert connect(settings).connection_pool is before
        assert before._created_connections == made  # no new connection: calls reuse the pool

    def test_a_forked_child_enqueues_on_a_connection_of_its_own(self, settings: Settings) -> None:
        parent = producer.enqueue(example.example_request(), settings=settings)
        parents_connection = connect(settings).client_id()
        context = multiprocessing.get_context("fork")
        with context.Pool(1) as pool:
            child_job_id, childs_connection = pool.apply(_enqueue_in_child, (settings,))

        assert childs_connection != parents_connection  # a shared socket would answer with one id
        assert child_job_id != parent.job_id
        assert producer.status(child_job_id, settings=settings).status == "queued"
        producer.enqueue(example.example_request(), settings=settings)  # the parent's pool still works
        assert connect(settings).client_id() == parents_connection

    def test_asyncio_runs_one_after_another_leave_no_client_and_no_connection_behind(self) -> None:
        with RedisServer() as server:
            settings = make_settings(server.url)
            handle = producer.enqueue(example.example_request(), settings=settings)
            admin = server.client()
            before = len(admin.client_list())  # the admin's and the sync pool's

            for _ in range(20):
                asyncio.run(aio.status(handle, settings=settings))

            assert len(connections._async_clients) <= 1
            wait_for(
                lambda: len(admin.client_list()) <= before, 5, "the asyncio clients' connections to close"
            )
            admin.close()

    def test_a_loop_closed_without_shutting_down_lets_go_of_its_client(self, settings: Settings) -> None:
        handle = producer.enqueue(example.example_request(), settings=settings)
        loop = asyncio.new_event_loop()
        loop.run_until_complete(aio.status(handle, settings=settings))
        loop.close()  # no shutdown_asyncgens: nothing could close its client on it

        asyncio.run(aio.status(handle, settings=settings))

        assert loop not in connections._async_clients


def _enqueue_in_child(settings: Settings) -> tuple[str, int]:
    job_id = producer.enqueue(example.example_request(), settings=settings).job_id
    return job_id, connect(settings).client_id()


class TestEventsWithShortSocketTimeouts:
    """An XREAD BLOCK longer than the connection's socket timeout would fail a reader that waits."""

    @pytest.mark.parametrize(
        ("query", "overrides"),
        [("?socket_timeout=0.5", {}), ("", {"redis_timeout": 0.5})],
        ids=["socket_timeout-in-REDIS_URL", "RANKSTREAM_REDIS_TIMEOUT"],
    )
    @pytest.mark.parametrize("shell", ["sync", "asyncio"])
    def test_a_job_queued_longer_than_the_timeout_is_read_to_its_end(
        self, shell: str, query: str, overrides: dict[str, Any], sim: Simulator
    ) -> None:
        with RedisServer() as server, ThreadPoolExecutor(1) as reader:
            settings = make_settings(server.url + query, **overrides)
            handle = producer.enqueue(example.example_request(), settings=settings)
            admin = server.client()
            read = reader.submit(read_all if shell == "sync" else aread_all, handle.job_id, settings)

            # Three XREADs of a queued job: it has waited past its 0.5 s socket timeout.
            wait_for(lambda: read.done() or xreads(admin) >= 3, 10, "the reader to wait")
            worker = WorkerProcess(make_settings(server.url, queue=settings.queue), sim)
            try:
                stream = read.result(timeout=30)
            finally:
                worker.stop()
                admin.close()

        assert [e.type for e in stream] == ["started"] + ["item"] * 10 + ["done"]


def read_all(job_id: str, settings: Settings) -> list[Event]:
    return list(producer.events(job_id, block=2.0, timeout=60, settings=settings))


def aread_all(job_id: str, settings: Settings) -> list[Event]:
    async def collect() -> list[Event]:
        async with asyncio.timeout(60):
            return [event async for event in aio.events(job_id, block=2.0, settings=settings)]

    return asyncio.run(collect())


def xreads(admin: redis.Redis) -> int:
    """XREAD calls the server has answered."""
    calls: int = admin.info("commandstats").get("cmdstat_xread", {}).get("calls", 0)
    return calls
