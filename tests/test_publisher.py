"""The publisher's atomic steps: one rank per product per job, one terminal event, safe to retry.

A client that loses a reply (a timeout, a dropped connection) sends the same call again; the
scripts answer the second call as they did the first and write nothing twice.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from rankstream import keys, scripts
from rankstream.codes import ErrorCode
from rankstream.dev.redis_server import RedisServer
from rankstream.models import Done, Failed, Timings
from worker.publish import Attempt, Published, Publisher, RedisScripts, Refused
from worker.redis_link import RedisLink


def new_job(connection: redis.Redis) -> tuple[str, list[str]]:
    job_id = keys.new_job_id()
    connection.hset(keys.state(job_id), mapping={"enqueued_at": "1.0", "status": "queued"})
    return job_id, keys.job_keys(job_id)


def entries(connection: redis.Redis, job_id: str) -> list[bytes]:
    return [fields[b"type"] for _, fields in connection.xrange(keys.events(job_id))]


class TestRetriedCalls:
    def test_a_repeated_start_is_the_same_attempt_with_one_started_event(
        self, connection: redis.Redis
    ) -> None:
        job_id, job_keys = new_job(connection)
        start = connection.register_script(scripts.START)
        first = start(keys=job_keys, args=[60, job_id, "m", 2.0, "token:1"])
        again = start(keys=job_keys, args=[60, job_id, "m", 2.0, "token:1"])
        second = start(keys=job_keys, args=[60, job_id, "m", 3.0, "token:2"])

        assert first == again == [1, [], b"1.0", b"2.0"]
        assert second[0] == 2 and second[3] == b"2.0"  # the first attempt's start is kept
        assert entries(connection, job_id) == [b"started", b"started"]

    def test_a_repeated_item_keeps_its_rank_and_another_attempt_gets_duplicate(
        self, connection: redis.Redis
    ) -> None:
        job_id, job_keys = new_job(connection)
        publish = connection.register_script(scripts.PUBLISH_ITEM)
        body = '"product_id":"7","product_name":"x","source":"llm"}'
        assert publish(keys=job_keys, args=["7", body, 60, 1.0, 1]) == [1]
        assert publish(keys=job_keys, args=["7", body, 60, 1.0, 1]) == [1]
        assert publish(keys=job_keys, args=["8", body, 60, 1.0, 1]) == [2]
        assert publish(keys=job_keys, args=["7", body, 60, 1.0, 2]) == [scripts.DUPLICATE.encode()]
        assert entries(connection, job_id) == [b"item", b"item"]

    def test_a_repeated_finish_answers_its_entry_and_another_writer_gets_nothing(
        self, connection: redis.Redis
    ) -> None:
        job_id, job_keys = new_job(connection)
        finish = connection.register_script(scripts.FINISH)
        first = finish(keys=job_keys, args=["done", "{}", 60, 1.0, "writer-a"])
        assert first is not None
        assert finish(keys=job_keys, args=["done", "{}", 60, 1.0, "writer-a"]) == first
        assert finish(keys=job_keys, args=["error", "{}", 60, 1.0, "writer-b"]) is None
        assert entries(connection, job_id) == [b"done"]


class TestPublisher:
    def test_answers_are_typed_and_ranks_follow_the_order_sent(
        self, redis_url: str, connection: redis.Redis
    ) -> None:
        job_id, _ = new_job(connection)

        async def run() -> list[Any]:
            link = RedisLink(redis_url, 5.0)
            try:
                publisher = Publisher(RedisScripts(link), job_id, ttl=60)
                attempt = await publisher.start("m")
                items = [(str(i), {"product_name": f"p{i}", "source": "llm"}) for i in range(5)]
                many = await publisher.publish(items)
                one = await publisher.publish([("0", {"product_name": "p0", "source": "llm"})])
                await publisher.error(Failed(code=ErrorCode.TIMEOUT, message="m", retryable=True, attempt=1))
                late = await publisher.publish([("9", {"product_name": "p9", "source": "llm"})])
                return [attempt, many, one, late, await publisher.start("m")]
            finally:
                await link.aclose()

        attempt, many, one, late, restart = asyncio.run(run())
        assert isinstance(attempt, Attempt) and attempt.started_at is not None
        assert attempt == Attempt(
            number=1, published=frozenset(), enqueued_at=1.0, started_at=attempt.started_at
        )
        assert many == [Published(rank) for rank in range(1, 6)]
        assert one == [Published(1)]  # the same attempt sent it again: its rank, not a second entry
        assert late == [Refused.JOB_ENDED] and restart is Refused.JOB_ENDED

    def test_a_cancel_flag_refuses_the_next_item(self, redis_url: str, connection: redis.Redis) -> None:
        job_id, _ = new_job(connection)

        async def run() -> list[Any]:
            link = RedisLink(redis_url, 5.0)
            try:
                publisher = Publisher(RedisScripts(link), job_id, ttl=60)
                await publisher.start("m")
                await link.execute("HSET", keys.state(job_id), "cancel", "1")
                return [
                    await publisher.publish([("1", {"source": "llm"})]),
                    await publisher.cancel_requested(),
                ]
            finally:
                await link.aclose()

        assert asyncio.run(run()) == [[Refused.CANCEL_REQUESTED], True]

    def test_several_items_go_out_together_in_order_even_when_redis_forgot_the_scripts(
        self, redis_url: str, connection: redis.Redis
    ) -> None:
        job_id, _ = new_job(connection)

        async def run() -> list[Any]:
            link = RedisLink(redis_url, 5.0)
            try:
                publisher = Publisher(
                    RedisScripts(link), job_id, ttl=60, request_key=f"test-request-{job_id}"
                )
                await link.execute("SET", f"test-request-{job_id}", job_id)
                await publisher.start("m")
                await link.execute("SCRIPT", "FLUSH")  # a restarted or failed-over Redis
                items = [(str(i), {"product_name": f"p{i}", "source": "llm"}) for i in range(8)]
                many = await publisher.publish(items)
                moments = await publisher.moments()
                written = await publisher.done(Done(count=8, rejected={}, timings=Timings(total=1.0)))
                return [many, moments, written, await link.execute("TTL", f"test-request-{job_id}")]
            finally:
                await link.aclose()

        many, (started, first_item), written, request_ttl = asyncio.run(run())
        assert many == [Published(rank) for rank in range(1, 9)]
        assert started is not None and first_item is not None and started <= first_item
        assert written and 0 < request_ttl <= 60  # the request_id lives as long as the stream
        events = connection.xrange(keys.events(job_id))
        items = [json.loads(fields[b"data"]) for _, fields in events if fields[b"type"] == b"item"]
        assert [item["product_id"] for item in items] == [str(i) for i in range(8)]
        assert [item["rank"] for item in items] == list(range(1, 9))
        assert entries(connection, job_id)[-1] == b"done"

    def test_several_items_cut_off_by_a_killed_connection_are_sent_again_together_in_order(self) -> None:
        with RedisServer() as server:
            admin = server.client()
            job_id, _ = new_job(admin)

            async def run() -> list[Published | Refused]:
                link = RedisLink(server.url, 5.0)
                try:
                    publisher = Publisher(RedisScripts(link), job_id, ttl=60)
                    await publisher.start("m")
                    link_id = await link.execute("CLIENT", "ID")
                    admin.client_pause(400, all=False)  # writes wait: the batch is in flight, unanswered
                    items = [(str(i), {"product_name": f"p{i}", "source": "llm"}) for i in range(5)]
                    batch = asyncio.create_task(publisher.publish(items))
                    await asyncio.sleep(0.1)
                    assert admin.client_kill_filter(_id=link_id) == 1
                    return await batch  # the link's retry sends the whole batch again, on a new connection
                finally:
                    await link.aclose()

            try:
                replies = asyncio.run(run())
                events = admin.xrange(keys.events(job_id))
            finally:
                admin.close()

        assert replies == [Published(rank) for rank in range(1, 6)]
        items = [json.loads(fields[b"data"]) for _, fields in events if fields[b"type"] == b"item"]
        assert [(item["rank"], item["product_id"]) for item in items] == [
            (r, str(r - 1)) for r in range(1, 6)
        ]


class TestAJobWhoseStateIsGone:
    """A job whose state hash is gone (expired, or never made by enqueue) is over: nothing writes to it.

    Without the check a late writer (a worker that outlived the TTL, a retried call) would make
    the stream again, holding one event, and the ranks hash with it: a job back from the dead.
    """

    def gone_job(self, connection: redis.Redis, how: str) -> tuple[str, list[str]]:
        if how == "never made":
            job_id = keys.new_job_id()
            return job_id, keys.job_keys(job_id)
        job_id, job_keys = new_job(connection)
        connection.delete(keys.state(job_id))  # what its TTL does
        return job_id, job_keys

    @pytest.mark.parametrize("how", ["expired", "never made"])
    def test_start_answers_ended_and_writes_nothing(self, connection: redis.Redis, how: str) -> None:
        job_id, job_keys = self.gone_job(connection, how)
        reply = connection.register_script(scripts.START)(keys=job_keys, args=[60, job_id, "m", 1.0, "t:1"])

        assert reply == [scripts.ENDED.encode()]
        assert connection.exists(*job_keys) == 0

    @pytest.mark.parametrize("how", ["expired", "never made"])
    def test_publish_item_answers_ended_and_writes_nothing(self, connection: redis.Redis, how: str) -> None:
        _, job_keys = self.gone_job(connection, how)
        body = '"product_id":"7","product_name":"x","source":"llm"}'
        reply = connection.register_script(scripts.PUBLISH_ITEM)(keys=job_keys, args=["7", body, 60, 1.0, 1])

        assert reply == [scripts.ENDED.encode()]
        assert connection.exists(*job_keys) == 0

    @pytest.mark.parametrize("how", ["expired", "never made"])
    def test_finish_answers_false_and_writes_nothing(self, connection: redis.Redis, how: str) -> None:
        _, job_keys = self.gone_job(connection, how)
        reply = connection.register_script(scripts.FINISH)(keys=job_keys, args=["done", "{}", 60, 1.0, "w"])

        assert reply is None  # Lua false
        assert connection.exists(*job_keys) == 0

    def test_a_started_job_whose_state_expired_first_gets_no_more_events(
        self, connection: redis.Redis
    ) -> None:
        job_id, job_keys = new_job(connection)
        connection.register_script(scripts.START)(keys=job_keys, args=[60, job_id, "m", 1.0, "t:1"])
        body = '"product_id":"7","product_name":"x","source":"llm"}'
        connection.register_script(scripts.PUBLISH_ITEM)(keys=job_keys, args=["7", body, 60, 1.0, 1])
        connection.delete(keys.state(job_id))  # the keys expire one by one, the state first

        publish = connection.register_script(scripts.PUBLISH_ITEM)
        assert publish(keys=job_keys, args=["8", body, 60, 1.0, 1]) == [scripts.ENDED.encode()]
        assert (
            connection.register_script(scripts.FINISH)(keys=job_keys, args=["done", "{}", 60, 1.0, "w"])
            is None
        )
        assert entries(connection, job_id) == [b"started", b"item"]
        assert connection.hkeys(keys.published(job_id)) == [b"7"]

    def test_the_worker_publisher_reads_the_answers_as_job_ended(self, redis_url: str) -> None:
        job_id = keys.new_job_id()

        async def run() -> list[Any]:
            link = RedisLink(redis_url, 5.0)
            try:
                publisher = Publisher(RedisScripts(link), job_id, ttl=60)
                return [
                    await publisher.start("m"),
                    await publisher.publish([("1", {"product_name": "p1", "source": "llm"})]),
                    await publisher.publish([("2", {"source": "llm"}), ("3", {"source": "llm"})]),
                    await publisher.done(Done(count=0, rejected={}, timings=Timings())),
                ]
            finally:
                await link.aclose()

        assert asyncio.run(run()) == [
            Refused.JOB_ENDED,
            [Refused.JOB_ENDED],
            [Refused.JOB_ENDED, Refused.JOB_ENDED],
            False,
        ]


class TestRacingWriters:
    """Writers on one job at the same moment (two workers after a lost lease, a cancel and a worker).

    Each writer has its own connection and they start together at a barrier; a Lua script runs
    whole, so Redis applies their calls one after another in some order. Whatever the order, the
    promises hold.
    """

    WRITERS = 8

    def test_each_product_is_published_once_with_ranks_one_to_n_in_the_order_applied(
        self, redis_url: str, connection: redis.Redis
    ) -> None:
        job_id, job_keys = new_job(connection)
        shared = [f"s{n}" for n in range(40)]  # every writer publishes these
        own = {writer: [f"w{writer}-{n}" for n in range(5)] for writer in range(self.WRITERS)}
        barrier = threading.Barrier(self.WRITERS)

        def writer(number: int) -> list[tuple[str, Any]]:
            ids = shared + own[number]
            random.Random(number).shuffle(ids)
            client = redis.Redis.from_url(redis_url)
            try:
                publish = client.register_script(scripts.PUBLISH_ITEM)
                barrier.wait(timeout=10)
                answers = []
                for product_id in ids:
                    body = json.dumps({"product_id": product_id, "writer": number})[1:]
                    # Another attempt number per writer: each is a different worker's attempt.
                    reply = publish(keys=job_keys, args=[product_id, body, 60, 1.0, number + 1])
                    answers.append((product_id, reply[0]))
                return answers
            finally:
                client.close()

        with ThreadPoolExecutor(self.WRITERS) as pool:
            answers = [pair for result in pool.map(writer, range(self.WRITERS)) for pair in result]

        items = [
            json.loads(fields[b"data"])
            for _, fields in connection.xrange(keys.events(job_id))
            if fields[b"type"] == b"item"
        ]
        winners = {item["writer"] for item in items if item["product_id"] in shared}
        assert len(winners) > 1, "one writer published every shared product: the writers never raced"
        everything = shared + [pid for ids in own.values() for pid in ids]
        assert sorted(item["product_id"] for item in items) == sorted(everything)  # each exactly once
        assert [item["rank"] for item in items] == list(range(1, len(everything) + 1))  # stream order
        ranked = {item["product_id"]: (item["rank"], item["writer"]) for item in items}
        published = {pid: value for pid, value in answers if isinstance(value, int)}
        assert published == {pid: rank for pid, (rank, _) in ranked.items()}  # one winner per product
        assert sum(isinstance(value, int) for _, value in answers) == len(everything)
        assert all(value == scripts.DUPLICATE.encode() for _, value in answers if not isinstance(value, int))
        stored = {k.decode(): v.decode() for k, v in connection.hgetall(keys.published(job_id)).items()}
        assert stored == {pid: f"{writer + 1}:{rank}" for pid, (rank, writer) in ranked.items()}

    def test_racing_finishes_write_one_terminal_event_and_tell_one_writer(
        self, redis_url: str, connection: redis.Redis
    ) -> None:
        # Were FINISH's HSETNX an HSET, every writer would take the `terminal` field: HSET answers 0
        # when it overwrites, and the overwriting writer then finds its own token there and is told
        # it wrote (the first writer's entry id). Every loser would believe it had ended the job,
        # and the field would name the last writer, not the one whose event is on the stream.
        jobs = [new_job(connection) for _ in range(20)]
        barrier = threading.Barrier(self.WRITERS)

        def writer(number: int) -> list[Any]:
            ending = "done" if number % 2 == 0 else "error"
            client = redis.Redis.from_url(redis_url)
            try:
                finish = client.register_script(scripts.FINISH)
                replies = []
                for _, job_keys in jobs:
                    barrier.wait(timeout=10)  # all writers on one job at once
                    replies.append(finish(keys=job_keys, args=[ending, "{}", 60, 1.0, f"writer-{number}"]))
                return replies
            finally:
                client.close()

        with ThreadPoolExecutor(self.WRITERS) as pool:
            by_writer = list(pool.map(writer, range(self.WRITERS)))

        for index, (job_id, _) in enumerate(jobs):
            told = [(number, replies[index]) for number, replies in enumerate(by_writer) if replies[index]]
            stream = connection.xrange(keys.events(job_id))
            assert len(stream) == 1 and len(told) == 1, (stream, told)
            (winner, entry_id), ((stream_id, fields),) = told[0], stream
            assert entry_id == stream_id
            assert fields[b"type"] == (b"done" if winner % 2 == 0 else b"error")
            state = connection.hgetall(keys.state(job_id))
            assert state[b"terminal"] == f"writer-{winner}".encode()
            assert state[b"status"] == fields[b"type"]
