"""The LLM client's asyncio network backend: the same HTTP as httpx2's own, on leaner sockets."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest
import trustme
import uvicorn
from conftest import Simulator, wait_for

from rankstream import example
from rankstream.redis_server import free_port
from rankstream.settings import Settings
from rankstream.simulator import SimConfig, create_app
from worker import prompt
from worker.llm import classify, make_client, stream_deltas
from worker.network import AsyncioBackend, http_client

TIMEOUT = httpx2.Timeout(5.0)


def body() -> dict[str, object]:
    return prompt.chat_request(example.example_request(), "rankstream-sim")


async def stream_text(client: openai.AsyncOpenAI) -> str:
    texts: list[str] = []
    async with stream_deltas(client, body()) as (_, batches):
        async for batch in batches:
            texts.extend(batch)
    return "".join(texts)


def test_the_workers_llm_client_reads_through_the_asyncio_backend(sim: Simulator) -> None:
    client = make_client(Settings(), sim.base_url)
    pool = client._client._transport._pool  # type: ignore[attr-defined]
    assert isinstance(pool._network_backend, AsyncioBackend)


def test_keep_alive_reuses_one_connection(sim: Simulator) -> None:
    async def run() -> tuple[str, str, int]:
        http = http_client(TIMEOUT)
        client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="unused", max_retries=0, http_client=http)
        first, second = await stream_text(client), await stream_text(client)
        connections = len(http._transport._pool.connections)  # type: ignore[attr-defined]
        await client.close()
        return first, second, connections

    first, second, connections = asyncio.run(run())
    assert first == second and '"recommendations"' in first
    assert connections == 1


def test_a_silent_server_raises_a_read_timeout_the_job_retries_as_timeout(sim: Simulator) -> None:
    sim.fault("slow_first_token", 1)
    with pytest.raises(httpx2.ReadTimeout) as raised:  # in the body: the SDK does not wrap it
        stream_from(sim.base_url, http_client(httpx2.Timeout(5.0, read=0.3)))
    assert classify(raised.value) == ("timeout", True, None)


def stream_from(url: str, http: httpx2.AsyncClient) -> str:
    """The whole streamed answer, through a fresh openai client on `http`."""

    async def run() -> str:
        client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, http_client=http)
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
    """The simulator behind TLS, with a certificate from a throw-away CA."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder: Path = tmp_path_factory.mktemp("tls")
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    port = free_port()
    config = uvicorn.Config(
        create_app(SimConfig(ttft=0.01, tokens_per_second=2000)),
        host="127.0.0.1",
        port=port,
        ssl_certfile=str(certfile),
        ssl_keyfile=str(keyfile),
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 10, "the TLS simulator")
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    yield f"https://localhost:{port}/v1", trusted
    server.should_exit = True
    thread.join(10)


def test_streams_over_tls(tls_sim: tuple[str, ssl.SSLContext]) -> None:
    url, trusted = tls_sim
    assert '"recommendations"' in stream_from(url, http_client(TIMEOUT, verify=trusted))


def test_an_untrusted_certificate_is_refused(tls_sim: tuple[str, ssl.SSLContext]) -> None:
    url, _ = tls_sim
    with pytest.raises(openai.APIConnectionError):
        stream_from(url, http_client(TIMEOUT))
