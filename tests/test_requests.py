"""A bad request is refused at enqueue time, naming the field, and nothing is enqueued."""

from __future__ import annotations

import contextlib
import json
import os
import re
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
from producer.core import validate
from rankstream import keys
from rankstream.dev import example
from rankstream.dev.redis_server import RedisServer
from rankstream.exceptions import InvalidRequest, RequestConflict
from rankstream.models import RankingRequest
from rankstream.queue import ranking_queue
from rankstream.settings import Settings


def good() -> dict[str, Any]:
    return example.example_request().model_dump(mode="json")


def products(n: int) -> list[dict[str, str]]:
    return [{"product_id": str(i), "product_name": f"Product {i}"} for i in range(n)]


def product(product_id: object = "1", product_name: object = "a") -> dict[str, Any]:
    """A request change: one product, this id and name."""
    return {"products": [{"product_id": product_id, "product_name": product_name}]}


ID, NAME = "products.0.product_id", "products.0.product_name"

BAD_REQUESTS: dict[str, tuple[dict[str, Any], str]] = {
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
    # Text that cannot be written as UTF-8 (the job would fail `internal` in the worker).
    "lone surrogate in a product id": (product(product_id="\ud800"), ID),
    "lone surrogate in a product name": (product(product_name="Mac\udfffBook"), NAME),
    "lone surrogate in the profile": ({"profile": "likes \ud83d laptops"}, "profile"),
    "lone surrogate in the request_id": ({"request_id": "order-\ud800"}, "request_id"),
    "lone surrogate in the model": ({"model": "\udc00"}, "model"),
    # Blank text where words are needed.
    "whitespace-only profile": ({"profile": " \n\t\u3000 "}, "profile"),
    "whitespace-only product name": (product(product_name=" \t "), NAME),
    # Control characters: NUL anywhere; the C0 set except tab, newline and carriage return.
    "NUL in a product id": (product(product_id="1\x00"), ID),
    "NUL in a product name": (product(product_name="Mac\x00Book"), NAME),
    "NUL in the profile": ({"profile": "likes\x00laptops"}, "profile"),
    "NUL in the request_id": ({"request_id": "order\x00-1"}, "request_id"),
    "NUL in the model": ({"model": "gpt\x00"}, "model"),
    "terminal escape in a product name": (product(product_name="\x1b[31mSALE"), NAME),
    "form feed in the profile": ({"profile": "page one\x0cpage two"}, "profile"),
    "unit separator in a product id": (product(product_id="a\x1fb"), ID),
    # Ids are used verbatim, never trimmed: " 1 " and "1" must not be two products.
    "product id with a leading space": (product(product_id=" 1"), ID),
    "product id with a trailing newline": (product(product_id="1\n"), ID),
    "product id with a no-break space at the end": (product(product_id="1\u00a0"), ID),
    # Lengths.
    "top_k above the number of products": ({"top_k": 11}, "top_k"),
    "integer product id of 129 digits": (product(product_id=10**128), ID),
    "integer product id of 5000 digits": (product(product_id=10**5000), ID),
    "string product id of 129 characters": (product(product_id="x" * 129), ID),
}

# The whole message for a few refusals: what a caller reads, field first.
REFUSAL_MESSAGES = {
    "top_k above the number of products": "top_k: must be at most the number of products (10)",
    "integer product id of 129 digits": (
        "products.0.product_id: must be at most 128 characters: an integer id has at most 128 digits, its sign included"
    ),
    "integer product id of 5000 digits": (
        "products.0.product_id: must be at most 128 characters: an integer id has at most 128 digits, its sign included"
    ),
    "string product id of 129 characters": "products.0.product_id: must be at most 128 characters, got 129",
    "lone surrogate in a product id": (
        "products.0.product_id: must be valid Unicode text: a lone surrogate (U+D800) at position 0"
    ),
    "NUL in the profile": (
        "profile: must not contain control characters other than tab, newline and carriage return: "
        "U+0000 at position 5"
    ),
    "whitespace-only profile": "profile: must not be empty or whitespace only",
    "product id with a leading space": (
        "products.0.product_id: must not start or end with whitespace (ids are used verbatim, never trimmed)"
    ),
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

    @pytest.mark.parametrize("case", REFUSAL_MESSAGES, ids=REFUSAL_MESSAGES.keys())
    def test_the_message_says_what_is_wrong_in_plain_words(self, case: str) -> None:
        change, _ = BAD_REQUESTS[case]
        with pytest.raises(InvalidRequest) as refused:
            validate({**good(), **change})
        assert str(refused.value) == REFUSAL_MESSAGES[case]

    def test_top_k_is_weighed_against_the_products_of_the_same_request(self) -> None:
        with pytest.raises(InvalidRequest) as refused:
            validate({**good(), **product(), "top_k": 2})
        assert str(refused.value) == "top_k: must be at most the number of products (1)"

    def test_a_lone_surrogate_arriving_as_a_json_escape_is_refused_by_the_command(
        self, settings: Settings, connection: redis.Redis
    ) -> None:
        text = json.dumps({**good(), **product(product_id="\ud800")})  # as "\\ud800" in the JSON text
        result = run_cli(["enqueue", "-"], text, settings)
        assert result.returncode == 2, result.stderr
        assert "products.0.product_id: must be valid Unicode text" in result.stderr
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
    @pytest.mark.parametrize(
        "change",
        [
            {"profile": "Customer ID: 12345\r\n\tRecent Purchases: [Laptop]\n"},
            product(product_name="\tApple MacBook Air\n(2023) "),  # names are shown as they are
            product(product_id="SKU 1/β"),  # inner whitespace and any letters
            product(product_id=10**127),  # 128 digits
            product(product_id=-(10**126)),  # 128 characters with its sign
            product(product_id="x" * 128),
            {"top_k": 10},
            {"request_id": "order 1\twith\nbreaks"},
        ],
        ids=[
            "profile with tabs and line breaks",
            "name with whitespace at its ends",
            "id with inner space",
            "integer id of 128 digits",
            "negative integer id of 128 characters",
            "string id of 128 characters",
            "top_k equal to the number of products",
            "request_id with tab and newline",
        ],
    )
    def test_text_at_the_edge_of_the_rules_is_accepted_as_it_is(self, change: dict[str, Any]) -> None:
        request = validate({**good(), **change})
        assert request.model_dump(mode="json") == {**good(), **_as_strings(change)}

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


def _as_strings(change: dict[str, Any]) -> dict[str, Any]:
    """The change as the request model keeps it: integer ids become decimal strings."""
    if "products" not in change:
        return change
    return {"products": [{**p, "product_id": str(p["product_id"])} for p in change["products"]]}


class TestTheSchemaStatesTheRules:
    """The JSON schema the models produce says what enqueue refuses, for any JSON Schema validator."""

    SCHEMA = RankingRequest.model_json_schema()

    @pytest.mark.parametrize(
        "field,refused,accepted",
        [
            ("product_id", ["1\x00", " 1", "1 ", "1\n", "\u3000", "a\x1fb"], ["1", "a b", "SKU-β/7"]),
            ("product_name", ["a\x00", "\x1b[31m", " ", "\t\n"], ["a", " a ", "a\tb"]),
            ("profile", ["a\x00", "\x0c", "\u00a0\n"], ["a", "a\r\n\tb"]),
            ("request_id", ["a\x00", "\x07"], ["a", " a\tb "]),
            ("model", ["a\x00", "\x7f\x01"], ["gpt-4o", "a b"]),
        ],
    )
    def test_each_text_fields_pattern_refuses_what_enqueue_refuses(
        self, field: str, refused: list[str], accepted: list[str]
    ) -> None:
        # fullmatch: JSON Schema's `$` is the end of the text; Python's search would let it
        # match before a final newline.
        pattern = re.compile(self._string_schema(field)["pattern"])
        for text in refused:
            assert not pattern.fullmatch(text), text
            with pytest.raises(InvalidRequest):
                validate({**good(), **self._with(field, text)})
        for text in accepted:
            assert pattern.fullmatch(text), text
            validate({**good(), **self._with(field, text)})

    def test_lengths_and_counts_are_constraints(self) -> None:
        assert self._string_schema("product_id")["maxLength"] == 128
        assert self._string_schema("product_name")["maxLength"] == 1024
        assert self._string_schema("request_id")["maxLength"] == 256
        assert self.SCHEMA["properties"]["products"]["minItems"] == 1
        assert self.SCHEMA["properties"]["products"]["maxItems"] == 200

    def test_what_no_constraint_can_say_is_in_the_descriptions(self) -> None:
        product_id = self._string_schema("product_id")
        assert product_id["type"] == ["string", "integer"]
        assert "never trimmed" in product_id["description"]
        assert "at most 128 digits" in product_id["description"]
        assert "lone surrogates" in product_id["description"]
        assert "at most the number of products" in self.SCHEMA["properties"]["top_k"]["description"]
        assert "16384 bytes of UTF-8" in self.SCHEMA["properties"]["profile"]["description"]

    def _string_schema(self, field: str) -> dict[str, Any]:
        if field in ("product_id", "product_name"):
            spec: dict[str, Any] = self.SCHEMA["$defs"]["Product"]["properties"][field]
        else:
            spec = self.SCHEMA["properties"][field]
        strings = [s for s in spec.get("anyOf", [spec]) if "pattern" in s or "maxLength" in s]
        return {**spec, **strings[0]}

    @staticmethod
    def _with(field: str, text: str) -> dict[str, Any]:
        if field == "product_id":
            return product(product_id=text)
        if field == "product_name":
            return product(product_name=text)
        return {field: text}


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
