"""The hand-written streamed POST (worker/http_stream.py) against servers that misbehave.

Each server here is a real socket server on 127.0.0.1, scripted by the test; the client is the
worker's own (`LLMClient` over the openai client), so what reaches the job is what a job sees.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
import pytest
from conftest import Simulator
from support.proxy import clear_proxy_environment

from rankstream.codes import RetryCause
from worker.llm import LLMClient, stream_deltas
from worker.network import http_client
from worker.retry import classify

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]
SSE = b"data: " + b'{"choices":[{"delta":{"content":"hi"}}]}' + b"\n\ndata: [DONE]\n\n"


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_proxy_environment(monkeypatch)


@dataclass
class Server:
    port: int = 0
    connections: int = 0
    heads: list[bytes] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


async def read_request(reader: asyncio.StreamReader, server: Server) -> bool:
    """Read one request (head and Content-Length body); False at the end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return False
    server.heads.append(head)
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    return True


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[Server]:
    server = Server()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        try:
            await handler(reader, writer, server)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    listening = await asyncio.start_server(connected, "127.0.0.1", 0)
    server.port = listening.sockets[0].getsockname()[1]
    async with listening:
        yield server


def client_for(url: str, read: float = 5.0) -> LLMClient:
    http = http_client(httpx2.Timeout(5.0, read=read))
    return LLMClient(openai.AsyncOpenAI(base_url=url, api_key="k", max_retries=0, http_client=http), http)


async def text_of(client: LLMClient) -> str:
    request = {"model": "m", "messages": [{"role": "user", "content": "rank"}]}
    texts: list[str] = []
    async with stream_deltas(client, request) as (_, batches):
        async for batch in batches:
            texts.extend(batch)
    return "".join(texts)


def run(handler: Handler, body: Callable[[Server, LLMClient], Awaitable[Any]], read: float = 5.0) -> Any:
    async def main() -> Any:
        async with serving(handler) as server:
            client = client_for(server.url, read)
            try:
                return await body(server, client)
            finally:
                await client.close()

    return asyncio.run(main())


async def keep_alive_server(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
) -> None:
    while await read_request(reader, server):
        writer.write(OK_HEAD + chunked(SSE[:20], SSE[20:]))
        await writer.drain()


class TestConnections:
    def test_one_connection_carries_request_after_request(self) -> None:
        async def body(server: Server, client: LLMClient) -> list[str]:
            return [await text_of(client) for _ in range(3)]

        async def main() -> tuple[list[str], int]:
            async with serving(keep_alive_server) as server:
                client = client_for(server.url)
                try:
                    return await body(server, client), server.connections
                finally:
                    await client.close()

        texts, connections = asyncio.run(main())
        assert texts == ["hi"] * 3 and connections == 1

    def test_a_connection_the_server_closed_while_idle_is_replaced(self) -> None:
        async def one_per_connection(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
        ) -> None:
            await read_request(reader, server)
            writer.write(OK_HEAD + chunked(SSE))
            await writer.drain()  # then close: the pooled connection is dead

        async def body(server: Server, client: LLMClient) -> tuple[list[str], int]:
            texts = [await text_of(client)]
            await asyncio.sleep(0.05)  # the close reaches the client (any wait would do; none is needed)
            texts.append(await text_of(client))
            return texts, server.connections

        assert run(one_per_connection, body) == (["hi", "hi"], 2)

    def test_a_reused_connection_that_dies_before_answering_is_retried_on_a_fresh_one(self) -> None:
        async def answers_once(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
        ) -> None:
            await read_request(reader, server)
            writer.write(OK_HEAD + chunked(SSE))
            await writer.drain()
            await read_request(reader, server)  # the second request on it: dropped unanswered

        async def body(server: Server, client: LLMClient) -> tuple[list[str], int, int]:
            texts = [await text_of(client), await text_of(client)]
            return texts, server.connections, len(server.heads)

        assert run(answers_once, body) == (["hi", "hi"], 2, 3)

    def test_a_body_that_ends_with_the_connection_is_read_and_the_connection_dropped(self) -> None:
        async def until_close(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
        ) -> None:
            while await read_request(reader, server):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + SSE)
                await writer.drain()
                return

        async def body(server: Server, client: LLMClient) -> tuple[list[str], int]:
            return [await text_of(client), await text_of(client)], server.connections

        assert run(until_close, body) == (["hi", "hi"], 2)

    def test_leaving_a_stream_early_closes_its_connection(self) -> None:
        async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
            while await read_request(reader, server):
                writer.write(OK_HEAD)
                while True:
                    writer.write(chunked(SSE[:-14])[:-5])  # one event per chunk, never the last chunk
                    await writer.drain()
                    await asyncio.sleep(0.01)

        async def body(server: Server, client: LLMClient) -> tuple[str, int]:
            request = {"model": "m", "messages": []}
            async with stream_deltas(client, request) as (_, batches):
                first = (await anext(batches))[0]
            return first + await text_of_after_endless(client), server.connections

        async def text_of_after_endless(client: LLMClient) -> str:
            async with stream_deltas(client, {"model": "m", "messages": []}) as (_, batches):
                return (await anext(batches))[0]

        assert run(endless, body) == ("hihi", 2)  # the first connection was not reused mid-body


class TestErrors:
    def test_a_429_is_the_sdks_rate_limit_error_with_its_retry_after(self) -> None:
        async def limited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
            await read_request(reader, server)
            body = b'{"error": {"message": "slow down", "type": "rate_limit"}}'
            writer.write(
                b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            await writer.drain()

        async def body(server: Server, client: LLMClient) -> BaseException:
            with pytest.raises(openai.RateLimitError) as raised:
                await text_of(client)
            return raised.value

        error = run(limited, body)
        assert "slow down" in str(error)
        failure = classify(error)
        assert (failure.cause, failure.retry_after) == (RetryCause.RATE_LIMIT, 3.0)

    def test_a_server_that_never_answers_times_out_as_the_sdk_would(self) -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
            await read_request(reader, server)
            await asyncio.sleep(10)

        async def body(server: Server, client: LLMClient) -> RetryCause | None:
            with pytest.raises(openai.APITimeoutError) as raised:
                await text_of(client)
            return classify(raised.value).cause

        assert run(silent, body, read=0.3) == RetryCause.TIMEOUT

    @pytest.mark.parametrize(
        "answer",
        [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # not a chunk size
            b"SSH-2.0-OpenSSH_9.2\r\n\r\n",  # not HTTP
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(SSE) + SSE[:10],  # cut
        ],
    )
    def test_a_broken_answer_is_a_connection_error_the_job_retries(self, answer: bytes) -> None:
        async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
            await read_request(reader, server)
            writer.write(answer)
            await writer.drain()

        async def body(server: Server, client: LLMClient) -> RetryCause | None:
            with pytest.raises(openai.APIConnectionError) as raised:
                await text_of(client)
            return classify(raised.value).cause

        assert run(broken, body) == RetryCause.CONNECTION

    def test_trouble_on_the_connection_after_done_spoils_nothing(self) -> None:
        async def closes_after_done(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
        ) -> None:
            await read_request(reader, server)
            writer.write(OK_HEAD + b"%x\r\n" % len(SSE) + SSE + b"\r\n")  # no last chunk: then the close
            await writer.drain()

        async def body(server: Server, client: LLMClient) -> str:
            return await text_of(client)

        assert run(closes_after_done, body) == "hi"


class TestWhatIsSent:
    def test_the_same_url_and_headers_as_the_openai_client(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("OPENAI_ORG_ID", "org-7")
        monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-9")

        async def body(server: Server, client: LLMClient) -> list[bytes]:
            await text_of(client)  # hand-written
            sdk_only = LLMClient(client.sdk, client._http, hand_written=False)
            await text_of(sdk_only)
            return server.heads

        ours, sdks = (parse(head) for head in run(keep_alive_server, body))
        assert ours.pop("request") == sdks.pop("request") == "POST /v1/chat/completions HTTP/1.1"
        assert ours.pop("accept-encoding") == "identity"
        sdks.pop("accept-encoding")
        sdks.pop("connection", None)
        for name in ("content-length", "x-stainless-retry-count", "x-stainless-raw-response"):
            ours.pop(name, None)
            sdks.pop(name, None)
        assert ours == sdks
        assert ours["authorization"] == "Bearer k"
        assert (ours["openai-organization"], ours["openai-project"]) == ("org-7", "proj-9")


def parse(head: bytes) -> dict[str, str]:
    lines = head.decode().split("\r\n")
    fields = {"request": lines[0]}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            fields[name.lower()] = value.strip()
    return fields


def test_a_redirect_is_followed_by_the_openai_clients_stack(sim: Simulator) -> None:
    async def redirects(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await read_request(reader, server)
        location = f"{sim.base_url}/chat/completions".encode()
        writer.write(
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % location
        )
        await writer.drain()

    async def body(server: Server, client: LLMClient) -> str:
        request = {
            "model": "rankstream-sim",
            "messages": [{"role": "user", "content": "<profile>x</profile>"}],
        }
        texts: list[str] = []
        async with stream_deltas(client, request) as (_, batches):
            async for batch in batches:
                texts.extend(batch)
        return "".join(texts)

    assert run(redirects, body)  # the simulator answered, through the redirect
