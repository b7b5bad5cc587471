"""A bad request is refused at enqueue time, naming the field, and nothing is enqueued."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
import redis

from producer import enqueue
from rankstream.dev import example
from rankstream.exceptions import InvalidRequest
from rankstream.queue import ranking_queue
from rankstream.settings import Settings


def good() -> dict[str, Any]:
    return example.example_request().model_dump(mode="json")


def products(n: int) -> list[dict[str, str]]:
    return [{"product_id": str(i), "product_name": f"Product {i}"} for i in range(n)]


BAD_REQUESTS = {
    "no products": ({"products": []}, "products"),
    "duplicate ids": ({"products": [{"product_id": "1", "product_name": "a"}] * 2}, "products"),
    "201 products": ({"products": products(201)}, "products"),
    "17 KiB profile": ({"profile": "x" * 17 * 1024}, "profile"),
    "empty product id": ({"products": [{"product_id": " ", "product_name": "a"}]}, "products.0.product_id"),
    "boolean product id": (
        {"products": [{"product_id": True, "product_name": "a"}]},
        "products.0.product_id",
    ),
    "missing name": ({"products": [{"product_id": "1"}]}, "products.0.product_name"),
    "top_k zero": ({"top_k": 0}, "top_k"),
    "unknown field": ({"colour": "red"}, "colour"),
}


class TestRefusedRequests:
    @pytest.mark.parametrize("change,field", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
    def test_is_refused_naming_the_field_and_enqueues_nothing(
        self, change: dict[str, Any], field: str, settings: Settings, connection: redis.Redis
    ) -> None:
        with pytest.raises(InvalidRequest) as refused:
            enqueue({**good(), **change}, settings=settings, connection=connection)

        assert field in refused.value.fields
        assert field in str(refused.value)
        assert ranking_queue(connection, settings).count == 0

    def test_missing_profile_is_named(self, settings: Settings, connection: redis.Redis) -> None:
        request = good()
        del request["profile"]
        with pytest.raises(InvalidRequest) as refused:
            enqueue(request, settings=settings, connection=connection)
        assert refused.value.fields == ["profile"]
        assert ranking_queue(connection, settings).count == 0

    def test_a_non_object_is_refused(self, settings: Settings, connection: redis.Redis) -> None:
        with pytest.raises(InvalidRequest) as refused:
            enqueue(["not", "a", "request"], settings=settings, connection=connection)  # type: ignore[arg-type]
        assert refused.value.fields == ["request"]


class TestAcceptedRequests:
    def test_integer_ids_become_decimal_strings(self, settings: Settings, connection: redis.Redis) -> None:
        request = {**good(), "products": [{"product_id": 7, "product_name": "Seven"}]}
        enqueue(request, settings=settings, connection=connection)
        job = ranking_queue(connection, settings).jobs[0]
        assert job.args[0]["products"] == [{"product_id": "7", "product_name": "Seven"}]

    def test_the_job_is_json_not_pickle(self, settings: Settings, connection: redis.Redis) -> None:
        handle = enqueue(good(), settings=settings, connection=connection)
        job = ranking_queue(connection, settings).jobs[0]
        assert job.id == handle.job_id
        assert job.func_name == "worker.job.rank"
        assert handle.stream_key == f"rankstream:{{{handle.job_id}}}:events"


class TestIdempotentEnqueue:
    def test_the_same_request_id_twice_gives_one_job(
        self, settings: Settings, connection: redis.Redis
    ) -> None:
        first = enqueue({**good(), "request_id": "order-42"}, settings=settings, connection=connection)
        second = enqueue({**good(), "request_id": "order-42"}, settings=settings, connection=connection)

        assert first == second
        assert ranking_queue(connection, settings).count == 1

    def test_different_request_ids_give_different_jobs(
        self, settings: Settings, connection: redis.Redis
    ) -> None:
        first = enqueue({**good(), "request_id": "a"}, settings=settings, connection=connection)
        second = enqueue({**good(), "request_id": "b"}, settings=settings, connection=connection)
        assert first.job_id != second.job_id
        assert ranking_queue(connection, settings).count == 2


def run_cli(args: list[str], stdin: str, settings: Settings) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": settings.redis_url or "", "RANKSTREAM_QUEUE": settings.queue}
    return subprocess.run(
        [sys.executable, "-m", "rankstream", *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


class TestEnqueueCommand:
    def test_prints_the_handle(self, settings: Settings, connection: redis.Redis) -> None:
        result = run_cli(["enqueue", "-"], json.dumps(good()), settings)
        assert result.returncode == 0, result.stderr
        handle = json.loads(result.stdout)
        assert set(handle) == {"job_id", "stream_key"}
        assert ranking_queue(connection, settings).job_ids == [handle["job_id"]]

    def test_refuses_text_that_is_not_json(self, settings: Settings, connection: redis.Redis) -> None:
        result = run_cli(["enqueue", "-"], "{not json", settings)
        assert result.returncode != 0
        assert "request: not valid JSON" in result.stderr
        assert ranking_queue(connection, settings).count == 0

    def test_names_the_field_of_a_bad_request(self, settings: Settings, connection: redis.Redis) -> None:
        result = run_cli(["enqueue", "-"], json.dumps({**good(), "products": []}), settings)
        assert result.returncode != 0
        assert "products" in result.stderr
        assert ranking_queue(connection, settings).count == 0


def test_the_cli_lists_its_subcommands(settings: Settings) -> None:
    result = run_cli(["--help"], "", settings)
    assert result.returncode == 0
    for command in ("demo", "worker", "enqueue", "watch", "llm-sim"):
        assert command in result.stdout
