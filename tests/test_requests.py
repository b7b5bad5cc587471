"""A bad request is refused at enqueue time, naming the field, and nothing is enqueued."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from conftest import make_settings, wait_for

from producer import enqueue
from rankstream import keys
from rankstream.dev import example
from rankstream.dev.redis_server import RedisServer
from rankstream.exceptions import InvalidRequest, RequestConflict
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


class TestEnqueuedOnce:
    def test_a_request_is_queued_once_with_its_state(
        self, settings: Settings, connection: redis.Redis
    ) -> None:
        handle = enqueue(good(), settings=settings, connection=connection)

        assert ranking_queue(connection, settings).job_ids == [handle.job_id]
        assert connection.hget(keys.state(handle.job_id), "status") == b"queued"

    @pytest.mark.parametrize("request_id", [None, "order-lost-reply"], ids=["no-request-id", "request-id"])
    def test_a_lost_reply_to_the_transaction_neither_queues_the_job_twice_nor_fails(
        self, request_id: str | None
    ) -> None:
        with RedisServer() as server, LostReply(server.port) as relay:
            settings = make_settings(relay.url)
            admin = server.client()
            queue = ranking_queue(admin, settings)
            relay.drop_the_next_reply_to_exec(applied=lambda: queue.count > 0)

            handle = enqueue({**good(), "request_id": request_id}, settings=settings)

            assert relay.dropped == 1, "the relay never dropped a reply: nothing was tested"
            assert queue.job_ids == [handle.job_id]
            assert admin.hget(keys.state(handle.job_id), "status") == b"queued"
            admin.close()


class LostReply:
    """A TCP relay to a Redis that can pass on one transaction and lose its reply.

    Once armed, the connection that sends the next EXEC has it delivered, Redis runs the
    transaction (`applied()` says when), and the client sees the connection close instead of
    the reply: what a network failure right after EXEC looks like to redis-py. Every other
    byte is relayed as it is.
    """

    EXEC = b"*1\r\n$4\r\nEXEC\r\n"

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.dropped = 0
        self._applied: Callable[[], bool] | None = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self._listener.getsockname()[1]}/0"

    def drop_the_next_reply_to_exec(self, applied: Callable[[], bool]) -> None:
        self._applied = applied

    def __enter__(self) -> LostReply:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._listener.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # the listener closed
            while True:
                client, _ = self._listener.accept()
                server = socket.create_connection(("127.0.0.1", self.redis_port))
                muted = threading.Event()
                threading.Thread(target=self._requests, args=(client, server, muted), daemon=True).start()
                threading.Thread(target=self._replies, args=(server, client, muted), daemon=True).start()

    def _requests(self, client: socket.socket, server: socket.socket, muted: threading.Event) -> None:
        tail = b""
        with contextlib.suppress(OSError), client, server:
            while data := client.recv(65536):
                applied, seen = self._applied, tail + data
                tail = seen[-len(self.EXEC) :]
                if applied is None or self.EXEC not in seen:
                    server.sendall(data)
                    continue
                self._applied = None
                muted.set()  # before Redis has the EXEC, so no byte of its reply gets through
                server.sendall(data)
                wait_for(applied, 10, "Redis to run the transaction")
                self.dropped += 1
                return  # both sockets close: the client gets no reply

    def _replies(self, server: socket.socket, client: socket.socket, muted: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while (data := server.recv(65536)) and not muted.is_set():
                client.sendall(data)


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

    def test_the_same_request_id_with_another_body_is_refused_and_enqueues_nothing(
        self, settings: Settings, connection: redis.Redis
    ) -> None:
        first = enqueue({**good(), "request_id": "order-43"}, settings=settings, connection=connection)
        with pytest.raises(RequestConflict) as raised:
            enqueue(
                {**good(), "request_id": "order-43", "top_k": 3}, settings=settings, connection=connection
            )

        assert raised.value.job_id == first.job_id and raised.value.request_id == "order-43"
        assert ranking_queue(connection, settings).count == 1

    def test_a_claim_from_the_previous_version_holding_only_the_job_id_gives_its_job(
        self, settings: Settings, connection: redis.Redis
    ) -> None:
        first = enqueue({**good(), "request_id": "order-45"}, settings=settings, connection=connection)
        connection.set(keys.request("order-45"), first.job_id, keepttl=True)  # no body digest: as it was

        again = enqueue({**good(), "request_id": "order-45"}, settings=settings, connection=connection)

        assert again == first
        assert ranking_queue(connection, settings).count == 1

    def test_an_integer_id_and_its_decimal_string_are_the_same_body(
        self, settings: Settings, connection: redis.Redis
    ) -> None:
        body = good()
        as_integers = {
            **body,
            "products": [{**p, "product_id": int(p["product_id"])} for p in body["products"]],
        }
        first = enqueue({**body, "request_id": "order-44"}, settings=settings, connection=connection)
        second = enqueue({**as_integers, "request_id": "order-44"}, settings=settings, connection=connection)
        assert first == second

    def test_racing_enqueues_of_one_request_id_make_one_job_and_every_handle_names_it(
        self, settings: Settings, connection: redis.Redis
    ) -> None:
        request = {**good(), "request_id": "order-race"}
        with ThreadPoolExecutor(max_workers=8) as pool:
            handles = list(pool.map(lambda _: enqueue(request, settings=settings), range(32)))

        assert len({h.job_id for h in handles}) == 1
        assert ranking_queue(connection, settings).job_ids == [handles[0].job_id]
        assert connection.hget(keys.state(handles[0].job_id), "status") == b"queued"  # its state exists


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

    def test_a_request_id_conflict_exits_non_zero_naming_the_request_id(
        self, settings: Settings, connection: redis.Redis
    ) -> None:
        assert (
            run_cli(["enqueue", "-"], json.dumps({**good(), "request_id": "cli-1"}), settings).returncode == 0
        )
        result = run_cli(
            ["enqueue", "-"], json.dumps({**good(), "request_id": "cli-1", "top_k": 2}), settings
        )
        assert result.returncode == 2
        assert "request_id" in result.stderr and "different request body" in result.stderr
        assert ranking_queue(connection, settings).count == 1

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
