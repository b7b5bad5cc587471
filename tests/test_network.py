"""The LLM client's asyncio network backend: the same HTTP as httpx2's own, on leaner sockets."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from conftest import Simulator
from support.proxy import RecordingProxy, clear_proxy_environment
from support.tls_simulator import tls_simulator

from rankstream.codes import RetryCause
from rankstream.dev import example
from rankstream.dev.redis_server import free_port
from rankstream.settings import Settings
from worker import prompt
from worker.llm import LLMClient, make_client, stream_deltas
from worker.network import AsyncioStream, http_client
from worker.retry import classify

TIMEOUT = httpx2.Timeout(5.0)


def body() -> dict[str, object]:
    return prompt.chat_request(example.example_request(), "rankstream-sim")


async def stream_text(client: LLMClient) -> str:
    texts: list[str] = []
    async with stream_deltas(client, body()) as (_, batches):
        async for batch in batches:
            texts.extend(batch)
    return "".join(texts)


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """These connect straight to the simulator, whatever the machine's proxy settings."""
    clear_proxy_environment(monkeypatch)


async def streamed_connection(client: openai.AsyncOpenAI) -> Any:
    """The network stream (httpcore2's "network_stream" extension) one streamed completion read."""
    request: dict[str, Any] = body()
    async with client.chat.completions.with_streaming_response.create(**request, stream=True) as response:
        await response.http_response.aread()
        return response.http_response.extensions["network_stream"]


def test_the_workers_llm_client_reads_through_the_asyncio_backend(sim: Simulator) -> None:
    async def run() -> Any:
        client = make_client(Settings(), sim.base_url)
        try:
            return await streamed_connection(client.sdk)
        finally:
            await client.close()

    assert isinstance(asyncio.run(run()), AsyncioStream)


def test_a_proxied_llm_client_reads_through_the_asyncio_backend(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RecordingProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)

        async def run() -> Any:
            client = make_client(Settings(), sim.base_url)
            try:
                return await streamed_connection(client.sdk)
            finally:
                await client.close()

        stream = asyncio.run(run())
        assert proxy.lines == [f"POST {sim.base_url}/chat/completions HTTP/1.1"]
    assert isinstance(stream, AsyncioStream)
    assert stream.get_extra_info("server_addr")[1] == proxy.port  # the socket is the proxy's


def test_a_tunnelled_llm_client_reads_through_the_asyncio_backend(
    tls_sim: tuple[str, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, trusted = tls_sim
    with RecordingProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)

        async def run() -> Any:
            http = http_client(TIMEOUT, verify=trusted)
            client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, http_client=http)
            try:
                return await streamed_connection(client)
            finally:
                await client.close()

        stream = asyncio.run(run())
        assert [line.split()[0] for line in proxy.lines] == ["CONNECT"]
    assert isinstance(stream, AsyncioStream)
    assert stream.get_extra_info("ssl_object") is not None  # TLS to the simulator, inside the tunnel


def test_keep_alive_reuses_one_connection(sim: Simulator) -> None:
    async def run() -> tuple[str, str, tuple[Any, Any]]:
        http = http_client(TIMEOUT)
        client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="unused", max_retries=0, http_client=http)
        first, second = await stream_text(LLMClient(client, http)), await stream_text(LLMClient(client, http))
        streams = await streamed_connection(client), await streamed_connection(client)
        await client.close()
        return (
            first,
            second,
            (streams[0].get_extra_info("client_addr"), streams[1].get_extra_info("client_addr")),
        )

    first, second, (one, other) = asyncio.run(run())
    assert first == second and '"recommendations"' in first
    assert one == other  # the same local port: one connection, kept alive


def test_a_silent_server_raises_a_read_timeout_the_job_retries_as_timeout(sim: Simulator) -> None:
    sim.fault("slow_first_token", 1)
    with pytest.raises((openai.APITimeoutError, httpx2.ReadTimeout)) as raised:  # the SDK does not wrap it
        stream_from(sim.base_url, http_client(httpx2.Timeout(5.0, read=0.3)))
    failure = classify(raised.value)
    assert (failure.cause, failure.retryable, failure.retry_after) == (RetryCause.TIMEOUT, True, None)


def stream_from(url: str, http: httpx2.AsyncClient) -> str:
    """The whole streamed answer, through a fresh openai client on `http`."""

    async def run() -> str:
        client = LLMClient(
            openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, http_client=http), http
        )
        try:
            return await stream_text(client)
        finally:
            await client.close()

    return asyncio.run(run())


def test_a_refused_connection_raises_the_sdks_connection_error() -> None:
    with pytest.raises(openai.APIConnectionError):
        stream_from(f"http://127.0.0.1:{free_port()}/v1", http_client(TIMEOUT))


@pytest.fixture(scope="module")
def tls_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ssl.SSLContext]]:
    with tls_simulator(tmp_path_factory.mktemp("tls")) as served:
        yield served


def test_streams_over_tls(tls_sim: tuple[str, ssl.SSLContext]) -> None:
    url, trusted = tls_sim
    assert '"recommendations"' in stream_from(url, http_client(TIMEOUT, verify=trusted))


def test_an_untrusted_certificate_is_refused(tls_sim: tuple[str, ssl.SSLContext]) -> None:
    url, _ = tls_sim
    with pytest.raises(openai.APIConnectionError):
        stream_from(url, http_client(TIMEOUT))
