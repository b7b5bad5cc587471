"""The publisher's atomic steps: one rank per product per job, one terminal event, safe to retry.

A client that loses a reply (a timeout, a dropped connection) sends the same call again; the
scripts answer the second call as they did the first and write nothing twice.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis
import redis.asyncio

from rankstream import keys, scripts
from rankstream.codes import ErrorCode
from rankstream.models import Failed
from worker.publish import Attempt, Published, Publisher, RedisScripts, Refused


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

        assert first == again == [1, [], b"1.0"]
        assert second[0] == 2
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
            client = redis.asyncio.Redis.from_url(redis_url)
            try:
                publisher = Publisher(RedisScripts(client), job_id, ttl=60)
                attempt = await publisher.start("m")
                items = [(str(i), {"product_name": f"p{i}", "source": "llm"}) for i in range(5)]
                many = await publisher.publish(items)
                one = await publisher.publish([("0", {"product_name": "p0", "source": "llm"})])
                await publisher.error(Failed(code=ErrorCode.TIMEOUT, message="m", retryable=True, attempt=1))
                late = await publisher.publish([("9", {"product_name": "p9", "source": "llm"})])
                return [attempt, many, one, late, await publisher.start("m")]
            finally:
                await client.aclose()

        attempt, many, one, late, restart = asyncio.run(run())
        assert attempt == Attempt(number=1, published=frozenset(), enqueued_at=1.0)
        assert many == [Published(rank) for rank in range(1, 6)]
        assert one == [Published(1)]  # the same attempt sent it again: its rank, not a second entry
        assert late == [Refused.JOB_ENDED] and restart is Refused.JOB_ENDED

    def test_a_cancel_flag_refuses_the_next_item(self, redis_url: str, connection: redis.Redis) -> None:
        job_id, _ = new_job(connection)

        async def run() -> list[Any]:
            client = redis.asyncio.Redis.from_url(redis_url)
            try:
                publisher = Publisher(RedisScripts(client), job_id, ttl=60)
                await publisher.start("m")
                await client.hset(keys.state(job_id), "cancel", "1")
                return [
                    await publisher.publish([("1", {"source": "llm"})]),
                    await publisher.cancel_requested(),
                ]
            finally:
                await client.aclose()

        assert asyncio.run(run()) == [[Refused.CANCEL_REQUESTED], True]
