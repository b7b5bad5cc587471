"""The worker's minimal Redis client: replies matched to calls in order, and it heals itself."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

from rankstream.redis_server import RedisServer, free_port
from worker.resp import RespClient, RespConnectionError, RespError, Script, _Incomplete, encode, parse

ECHO = Script("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1, {ARGV[1]}}")


def run(
    redis_url: str, body: Callable[[RespClient], Awaitable[Any]], scripts: tuple[Script, ...] = ()
) -> Any:
    async def main() -> Any:
        client = RespClient(redis_url, scripts)
        try:
            return await body(client)
        finally:
            await client.close()

    return asyncio.run(main())


class TestReplies:
    def test_each_reply_type_decodes(self, redis_url: str) -> None:
        async def body(client: RespClient) -> list[Any]:
            await client.execute("DEL", "resp:h")
            return [
                await client.execute("PING"),
                await client.execute("HSET", "resp:h", "f", "v"),
                await client.execute("HGET", "resp:h", "f"),
                await client.execute("HGET", "resp:h", "missing"),
                await client.execute("HMGET", "resp:h", "f", "missing"),
            ]

        assert run(redis_url, body) == [b"PONG", 1, b"v", None, [b"v", None]]

    def test_an_error_reply_raises_and_the_connection_goes_on(self, redis_url: str) -> None:
        async def body(client: RespClient) -> Any:
            with pytest.raises(RespError, match="unknown command"):
                await client.execute("NO-SUCH-COMMAND")
            return await client.execute("PING")

        assert run(redis_url, body) == b"PONG"

    def test_replies_split_anywhere_are_reassembled(self) -> None:
        data = b"*2\r\n$3\r\nxyz\r\n:-7\r\n"
        for cut in range(len(data)):
            with pytest.raises(_Incomplete):  # the protocol waits for more bytes
                parse(data[:cut], 0)
        assert parse(data, 0) == ([b"xyz", -7], len(data))
        assert encode(("SET", "k", 1)) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n"


class TestScripts:
    def test_many_calls_in_flight_come_back_in_order(self, redis_url: str) -> None:
        async def body(client: RespClient) -> list[Any]:
            await client.execute("PING")
            bound = ECHO.bind(["resp:k"])
            sent = [client.send(bound, [f"v{i}", i]) for i in range(200)]
            return [await s.result() for s in sent]

        replies = run(redis_url, body, (ECHO,))
        assert replies == [[b"resp:k", f"v{i}".encode(), i + 1, [f"v{i}".encode()]] for i in range(200)]

    def test_a_flushed_script_is_loaded_again(self) -> None:
        async def body(client: RespClient) -> Any:
            await client.evalsha(ECHO.bind(["k"]), ["a", 1])
            await client.execute("SCRIPT", "FLUSH")
            return await client.evalsha(ECHO.bind(["k"]), ["b", 2])

        with RedisServer() as server:  # SCRIPT FLUSH is for a server of our own
            assert run(server.url, body) == [b"k", b"b", 3, [b"b"]]


class TestConnection:
    def test_a_killed_connection_fails_its_call_and_the_next_one_reconnects(self, redis_url: str) -> None:
        admin = redis.Redis.from_url(redis_url)

        async def body(client: RespClient) -> Any:
            own_id = await client.execute("CLIENT", "ID")
            admin.execute_command("CLIENT", "KILL", "ID", own_id)  # only ours: REDIS_URL may be shared
            with pytest.raises(RespConnectionError):
                for _ in range(100):  # the kill lands asynchronously
                    await client.execute("PING")
                    await asyncio.sleep(0.01)
            return await client.execute("PING")

        assert run(redis_url, body) == b"PONG"

    def test_password_and_database_from_the_url(self) -> None:
        with RedisServer() as server:
            admin = redis.Redis.from_url(server.url)
            admin.config_set("requirepass", "s3cret")
            url = f"redis://:s3cret@127.0.0.1:{server.port}/3"

            async def body(client: RespClient) -> Any:
                await client.execute("SET", "resp:db", "three")
                return await client.execute("CLIENT", "INFO")

            info = run(url, body)
            assert b" db=3 " in info
            assert redis.Redis(port=server.port, password="s3cret", db=3).get("resp:db") == b"three"

    def test_no_server_is_a_connection_error(self) -> None:
        with pytest.raises(RespConnectionError):
            run(f"redis://127.0.0.1:{free_port()}/0", lambda client: client.execute("PING"))
