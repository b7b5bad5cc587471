"""The publisher's Redis link (worker/redis_link.py) against a real redis-server.

Every reply shape comes back as redis-py reads it; calls in flight come back in the order sent,
each to its own caller, whatever happens on the way: an error reply, a caller that stops
waiting, a script Redis forgot, a connection killed, a Redis paused past the call timeout.
REDIS_URL's forms (TLS with a test CA and client certificates, a unix socket with a db and a
password, an ACL user, a client name) are served by redis-py's own connection.

The trouble tests use a Redis of their own (they kill connections and pause the server), and
most use a link without retries, to see what one try does; one shows the default retry at work.
The TLS tests need a redis-server built with TLS and are skipped, saying so, without one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import pytest
import redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError
from support.tls import Certificates

from rankstream.dev.redis_server import RedisServer
from worker.redis_link import RedisLink, Script

T = TypeVar("T")

NO_RETRY = {"retry": Retry(NoBackoff(), 0)}  # one try: what the link itself does with trouble


def on_link(url: str, use: Callable[[RedisLink], Awaitable[T]], timeout: float = 5.0, **options: Any) -> T:
    """`use(link)` on a fresh link to `url`, in an event loop of its own; the link closed after."""

    async def run() -> T:
        link = RedisLink(url, timeout, **options)
        try:
            return await use(link)
        finally:
            await link.aclose()

    return asyncio.run(run())


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A Redis of this test's own: its connections get killed, or the whole server paused."""
    with RedisServer() as private:
        yield private


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis.Redis]:
    client = server.client()
    yield client
    client.client_unpause()
    client.close()


async def client_id(link: RedisLink) -> int:
    reply: int = await link.execute("CLIENT", "ID")
    return reply


# --- replies -------------------------------------------------------------------------------------


class TestReplies:
    def test_every_reply_shape_comes_back_as_redis_py_reads_it(self, redis_url: str) -> None:
        key = f"test-link-{time.time_ns()}"
        binary = b"\x00\r\n$-1\r\n\xff" * 3  # protocol bytes inside a value are only data
        big = bytes(range(256)) * 4096  # 1 MiB: many reads, and a write redis-py splits

        async def use(link: RedisLink) -> list[Any]:
            replies = [
                await link.execute("PING"),  # status
                await link.execute("SET", f"{key}:b", binary),
                await link.execute("GET", f"{key}:b"),  # bulk
                await link.execute("GET", f"{key}:missing"),  # nil
                await link.execute("INCRBY", f"{key}:n", -7),  # integer
                await link.execute("MGET", f"{key}:b", f"{key}:missing"),  # array with a nil
                await link.execute("LRANGE", f"{key}:missing", 0, -1),  # empty array
                await link.execute("EVAL", "return {1, {'two', {3}}, false, 'x'}", 0),  # nested
                await link.execute("EVAL", "return false", 0),  # a script's false is nil in RESP2
                await link.execute("HSET", f"{key}:h", "a", "1"),
                await link.execute("HGETALL", f"{key}:h"),  # a flat array in RESP2, not a map
            ]
            await link.execute("SET", f"{key}:big", big)
            replies.append(await link.execute("GET", f"{key}:big") == big)
            await link.execute("DEL", f"{key}:b", f"{key}:n", f"{key}:h", f"{key}:big")
            return replies

        assert on_link(redis_url, use) == [
            b"PONG",
            b"OK",
            binary,
            None,
            -7,
            [binary, None],
            [],
            [1, [b"two", [3]], None, b"x"],
            None,
            1,
            [b"a", b"1"],
            True,
        ]

    def test_many_calls_in_flight_come_back_in_order_each_to_its_caller(self, redis_url: str) -> None:
        async def use(link: RedisLink) -> tuple[list[Any], list[list[Any]]]:
            sent = [link.send("ECHO", str(n)) for n in range(2000)]  # all written before any is read
            in_order = await link.replies(sent)

            async def caller(name: int) -> list[Any]:
                return [await link.execute("ECHO", f"{name}:{n}") for n in range(30)]

            by_caller = await asyncio.gather(*(caller(name) for name in range(50)))
            return in_order, by_caller

        in_order, by_caller = on_link(redis_url, use)

        assert in_order == [str(n).encode() for n in range(2000)]
        assert by_caller == [[f"{name}:{n}".encode() for n in range(30)] for name in range(50)]

    def test_an_error_reply_goes_to_its_caller_only_and_the_connection_goes_on(self, redis_url: str) -> None:
        key = f"test-link-{time.time_ns()}"

        async def use(link: RedisLink) -> list[Any]:
            before = await client_id(link)
            await link.execute("SET", key, "not a number")
            sent = [link.send("ECHO", "a"), link.send("INCR", key), link.send("ECHO", "c")]
            outcomes: list[Any] = []
            for future in sent:
                try:
                    outcomes.append(await future)
                except ResponseError as exc:
                    outcomes.append(exc)
            with pytest.raises(ResponseError, match="not an integer"):
                await link.replies([link.send("ECHO", "d"), link.send("INCR", key), link.send("ECHO", "f")])
            outcomes.append(await link.execute("ECHO", "g"))
            outcomes.append(await client_id(link) == before)  # the same connection throughout
            await link.execute("DEL", key)
            return outcomes

        a, error, c, g, same_connection = on_link(redis_url, use)

        assert (a, c, g) == (b"a", b"c", b"g")
        assert isinstance(error, ResponseError) and "not an integer" in str(error)
        assert same_connection

    def test_a_cancelled_caller_does_not_shift_the_replies(self, redis_url: str) -> None:
        key = f"test-link-{time.time_ns()}"

        async def use(link: RedisLink) -> list[Any]:
            before = await client_id(link)
            blocked = asyncio.create_task(link.execute("BLPOP", key, 5))  # answered only on a push
            await asyncio.sleep(0.05)
            blocked.cancel()  # as the watchdog's bounded poll is cut short
            behind = link.send("ECHO", "mine")  # queued behind the BLPOP on the same connection
            with pytest.raises(asyncio.TimeoutError):
                async with asyncio.timeout(0.05):
                    await link.execute("ECHO", "given up")  # behind it too, and abandoned
            pusher = RedisLink(redis_url, 5.0)
            try:
                await pusher.execute("RPUSH", key, "for the cancelled caller")  # BLPOP's reply comes now
            finally:
                await pusher.aclose()
            return [
                blocked.cancelled(),
                await behind,
                await link.execute("ECHO", "next"),
                await client_id(link) == before,  # no reconnect: every reply was matched, none lost
                await link.execute("LLEN", key),  # the BLPOP did run and take the element
            ]

        assert on_link(redis_url, use) == [True, b"mine", b"next", True, 0]


# --- scripts --------------------------------------------------------------------------------------


class TestScripts:
    def test_a_script_redis_forgot_is_loaded_again_even_with_calls_in_flight(self, redis_url: str) -> None:
        script = Script(f"-- {time.time_ns()}\nreturn {{KEYS[1], ARGV[1]}}")  # new to this Redis

        async def use(link: RedisLink) -> list[Any]:
            first = await link.evalsha(script, ["k"], ["1"])  # NOSCRIPT: loaded, then sent again
            await link.execute("SCRIPT", "FLUSH")
            many = await link.replies([link.send_script(script, ["k"], [str(n)]) for n in range(5)])
            after = await link.evalsha(script, ["k"], ["last"])
            return [first, many, after, await link.execute("SCRIPT", "EXISTS", script.sha)]

        first, many, after, exists = on_link(redis_url, use)

        assert first == [b"k", b"1"]
        assert many == [[b"k", str(n).encode()] for n in range(5)]
        assert after == [b"k", b"last"] and exists == [1]

    def test_a_script_that_does_not_compile_says_so_instead_of_noscript(self, redis_url: str) -> None:
        broken = Script(f"-- {time.time_ns()}\nreturn {{")

        async def use(link: RedisLink) -> tuple[ResponseError, bytes]:
            with pytest.raises(ResponseError) as raised:
                await link.evalsha(broken, [], [])
            return raised.value, await link.execute("ECHO", "still fine")

        error, after = on_link(redis_url, use)

        assert not isinstance(error, NoScriptError) and "compil" in str(error).lower(), error
        assert after == b"still fine"


# --- trouble on the connection ----------------------------------------------------------------------


class TestTrouble:
    def test_a_killed_connection_fails_the_calls_in_flight_and_the_next_call_reconnects(
        self, server: RedisServer, admin: redis.Redis
    ) -> None:
        async def use(link: RedisLink) -> list[Any]:
            before = await client_id(link)
            blocked = link.send("BLPOP", "nothing-comes", 5)
            behind = link.send("PING")
            await asyncio.sleep(0.05)  # both written, neither answered
            assert admin.client_kill_filter(_id=before) == 1
            outcomes = []
            for future in (blocked, behind):
                with pytest.raises(ConnectionError):
                    await future
                outcomes.append("ConnectionError")
            outcomes.append(await link.execute("ECHO", "again"))
            outcomes.append(await client_id(link) != before)
            return outcomes

        assert on_link(server.url, use, **NO_RETRY) == ["ConnectionError", "ConnectionError", b"again", True]

    def test_with_the_default_retry_a_killed_connection_costs_the_caller_nothing(
        self, server: RedisServer, admin: redis.Redis
    ) -> None:
        async def use(link: RedisLink) -> list[Any]:
            before = await client_id(link)
            blocked = asyncio.create_task(link.execute("BLPOP", "nothing-comes", 0.3))
            await asyncio.sleep(0.05)
            admin.client_kill_filter(_id=before)
            return [await blocked, await client_id(link) != before]

        assert on_link(server.url, use) == [None, True]  # sent again on a new connection: nil after 0.3 s

    def test_a_pause_past_the_timeout_times_out_the_call_and_the_next_call_gets_a_fresh_connection(
        self, server: RedisServer, admin: redis.Redis
    ) -> None:
        async def use(link: RedisLink) -> list[Any]:
            before = await client_id(link)
            admin.client_pause(3000, all=False)  # CLIENT PAUSE WRITE: writes wait, reads go on
            started = time.monotonic()
            first = link.send("SET", "paused", "1")
            await asyncio.sleep(0.1)
            second = link.send("PING")  # behind the write; its own deadline is later
            with pytest.raises(TimeoutError):
                await first
            waited = time.monotonic() - started
            with pytest.raises(ConnectionError):
                await second
            after = await client_id(link)  # not a write: answered during the pause, on a new connection
            echoed = await link.execute("ECHO", "mine")
            admin.client_unpause()
            written = await link.execute("SET", "paused", "2")
            return [waited, after != before, echoed, written]

        waited, fresh, echoed, written = on_link(server.url, use, timeout=0.3, **NO_RETRY)

        assert 0.25 <= waited < 1.5, waited  # the call's deadline, not the pause's end
        assert fresh and echoed == b"mine" and written == b"OK"

    def test_the_call_timeout_is_the_urls_socket_timeout_when_it_gives_one(self, redis_url: str) -> None:
        assert RedisLink(redis_url, 5.0).timeout == 5.0
        assert RedisLink(f"{redis_url}?socket_timeout=0.25", 5.0).timeout == 0.25

    def test_nobody_listening_is_a_connection_error_for_the_call(self) -> None:
        from rankstream.dev.redis_server import free_port

        url = f"redis://127.0.0.1:{free_port()}/0"

        with pytest.raises(ConnectionError):
            on_link(url, lambda link: link.execute("PING"), **NO_RETRY)

    def test_a_closed_link_refuses_calls(self, redis_url: str) -> None:
        async def use() -> None:
            link = RedisLink(redis_url, 5.0, **NO_RETRY)
            await link.ping()
            await link.aclose()
            await link.execute("PING")

        with pytest.raises(ConnectionError):
            asyncio.run(use())


# --- REDIS_URL's forms, served by redis-py's connection ---------------------------------------------


def with_options(url: str, **options: str | Path) -> str:
    return f"{url}?{urlencode({k: str(v) for k, v in options.items()})}"


async def round_trip(link: RedisLink) -> list[Any]:
    script = Script("return ARGV[1]")
    return [await link.ping(), await link.evalsha(script, [], ["via the link"])]


class TestURLForms:
    def test_rediss_with_the_test_ca_and_the_host_name_checked(
        self, tls_redis_server: str, certs: Certificates
    ) -> None:
        with RedisServer(tls=certs.server("optional"), binary=tls_redis_server) as server:  # TLS only
            url = with_options(
                server.url.replace("127.0.0.1", "localhost"),
                ssl_ca_certs=certs.ca,
                ssl_cert_reqs="required",
                ssl_check_hostname="true",
            )

            assert on_link(url, round_trip) == [True, b"via the link"]

    def test_rediss_with_a_client_certificate_when_the_server_requires_one(
        self, tls_redis_server: str, certs: Certificates
    ) -> None:
        with RedisServer(tls=certs.server("yes"), binary=tls_redis_server) as server:
            url = with_options(
                server.url,
                ssl_ca_certs=certs.ca,
                ssl_certfile=certs.client_cert,
                ssl_keyfile=certs.client_key,
            )

            assert on_link(url, round_trip) == [True, b"via the link"]

    def test_rediss_with_a_ca_that_did_not_sign_the_server_is_refused(
        self, tls_redis_server: str, certs: Certificates
    ) -> None:
        with RedisServer(tls=certs.server("optional"), binary=tls_redis_server) as server:
            url = with_options(server.url, ssl_ca_certs=certs.other_ca)

            with pytest.raises(ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
                on_link(url, round_trip, **NO_RETRY)

    def test_a_unix_socket_with_a_db_and_a_password(self) -> None:
        with RedisServer(unix_socket=True, password="s3cret pass/word") as server:
            url = server.unix_url.replace("?db=0", "?db=3")
            assert url.startswith("unix://:s3cret%20pass%2Fword@/")

            async def use(link: RedisLink) -> list[Any]:
                return [*await round_trip(link), await link.execute("SET", "where", "db 3")]

            assert on_link(url, use) == [True, b"via the link", b"OK"]
            admin = server.client(db=3)
            assert admin.get("where") == b"db 3"
            admin.close()

    def test_an_acl_user_a_db_and_a_client_name(self) -> None:
        with RedisServer() as server:
            admin = server.client()
            admin.acl_setuser(
                "ranker", enabled=True, passwords=["+ranker-pw"], keys=["*"], categories=["+@all"]
            )
            admin.acl_setuser("default", enabled=False)  # only the URL's user gets in
            admin.close()
            url = server.url.replace("redis://", "redis://ranker:ranker-pw@").replace("/0", "/2")

            async def use(link: RedisLink) -> list[Any]:
                info: bytes = await link.execute("CLIENT", "INFO")
                fields = dict(part.split("=", 1) for part in info.decode().split())
                return [fields["user"], fields["db"], fields["name"]]

            named = f"{url}?client_name=rankstream-publisher"
            assert on_link(named, use) == ["ranker", "2", "rankstream-publisher"]

    @pytest.mark.parametrize("option", ["protocol=3", "decode_responses=true"])
    def test_a_url_that_changes_the_shape_of_replies_is_refused(self, redis_url: str, option: str) -> None:
        with pytest.raises(ValueError, match="RESP2 replies as bytes"):
            RedisLink(f"{redis_url}?{option}", 5.0)
