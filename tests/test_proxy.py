"""The LLM client honours HTTP(S)_PROXY, ALL_PROXY and NO_PROXY as httpx2's own client does.

Every proxy here is a real one (tests/support/proxy.py) that records the requests it is sent.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx2
import openai
import pytest
from conftest import Simulator, WorkerProcess
from support.proxy import RecordingProxy, Seen, clear_proxy_environment
from support.tls_simulator import tls_simulator

from producer import enqueue, events
from rankstream.dev import example
from rankstream.dev.redis_server import free_port
from rankstream.settings import Settings
from worker import prompt
from worker.llm import LLMClient, make_client, stream_deltas
from worker.network import http_client

TIMEOUT = httpx2.Timeout(5.0)


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from no proxy settings, whatever the machine has; monkeypatch restores them."""
    clear_proxy_environment(monkeypatch)


@pytest.fixture
def proxy() -> Iterator[RecordingProxy]:
    with RecordingProxy() as running:
        yield running


def completion(base_url: str, http: httpx2.AsyncClient | None = None) -> str:
    """One streamed chat completion's text, through the worker's client (built here, after the env)."""

    async def run() -> str:
        client = (
            make_client(Settings(), base_url)
            if http is None
            else LLMClient(
                openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, http_client=http), http
            )
        )
        texts: list[str] = []
        try:
            request = prompt.chat_request(example.example_request(), "rankstream-sim")
            async with stream_deltas(client, request) as (_, batches):
                async for batch in batches:
                    texts.extend(batch)
        finally:
            await client.close()
        return "".join(texts)

    return asyncio.run(run())


def test_a_streamed_completion_goes_through_http_proxy(
    sim: Simulator, proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)

    assert '"recommendations"' in completion(sim.base_url)
    assert proxy.lines == [f"POST {sim.base_url}/chat/completions HTTP/1.1"]


def test_lower_case_http_proxy_works_too(
    sim: Simulator, proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", proxy.url)

    assert '"recommendations"' in completion(sim.base_url)
    assert proxy.lines == [f"POST {sim.base_url}/chat/completions HTTP/1.1"]


def test_all_proxy_carries_what_no_scheme_proxy_claims(
    sim: Simulator, proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALL_PROXY", proxy.url)

    assert '"recommendations"' in completion(sim.base_url)
    assert proxy.lines == [f"POST {sim.base_url}/chat/completions HTTP/1.1"]


def test_proxy_credentials_in_the_url_are_sent_to_the_proxy(
    sim: Simulator, proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://rank:stream@127.0.0.1:{proxy.port}")

    assert '"recommendations"' in completion(sim.base_url)
    assert proxy.seen == [
        Seen(f"POST {sim.base_url}/chat/completions HTTP/1.1", "Basic cmFuazpzdHJlYW0=")  # rank:stream
    ]


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "127.0.0.0/8", "localhost,example.com"])
def test_no_proxy_bypasses_the_proxy(
    sim: Simulator, proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch, no_proxy: str
) -> None:
    base_url = sim.base_url.replace("127.0.0.1", "localhost") if "localhost" in no_proxy else sim.base_url
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", no_proxy)

    assert '"recommendations"' in completion(base_url)
    assert proxy.lines == []


@pytest.fixture(scope="module")
def tls_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ssl.SSLContext]]:
    with tls_simulator(tmp_path_factory.mktemp("tls")) as served:
        yield served


def test_https_goes_through_a_connect_tunnel(
    tls_sim: tuple[str, ssl.SSLContext], proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, trusted = tls_sim
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # not for https: would fail
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)

    assert '"recommendations"' in completion(url, http_client(TIMEOUT, verify=trusted))
    host = url.removeprefix("https://").removesuffix("/v1")
    assert proxy.lines == [f"CONNECT {host} HTTP/1.1"]


def test_an_unreachable_proxy_is_the_sdks_connection_error(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")

    with pytest.raises(openai.APIConnectionError):
        completion(sim.base_url)


# Which proxy httpx2's own client picks, for the same environment and URLs, compared with ours.
# In the environments, {A} {B} {C} are three recording proxies' URLs and {a} {c} their ports; {T}
# is the port of a fourth that answers as a plain target. Hosts under .invalid do not resolve:
# sent direct they fail to connect, sent to a proxy they get its 502 (or, for CONNECT, ProxyError).


@dataclass(frozen=True)
class Case:
    env: dict[str, str]
    urls: list[str]
    routes: list[str]  # per URL, the proxy that should see it, or "direct": no proxy sees it


CASES = {
    "http_proxy": Case(
        {"HTTP_PROXY": "{A}"}, ["http://127.0.0.1:{T}/", "https://127.0.0.1:{T}/"], ["A", "direct"]
    ),
    "https_proxy": Case(
        {"HTTP_PROXY": "{A}", "HTTPS_PROXY": "{B}"},
        ["http://127.0.0.1:{T}/", "https://localhost:{T}/"],
        ["A", "B"],
    ),
    "all_proxy": Case(
        {"HTTP_PROXY": "{A}", "ALL_PROXY": "{C}"},
        ["http://127.0.0.1:{T}/", "https://127.0.0.1:{T}/"],
        ["A", "C"],
    ),
    "lower_case_wins": Case({"http_proxy": "{A}", "HTTP_PROXY": "{B}"}, ["http://127.0.0.1:{T}/"], ["A"]),
    "no_scheme": Case({"HTTP_PROXY": "127.0.0.1:{a}"}, ["http://localhost:{T}/"], ["A"]),
    "cgi_ignores_http_proxy": Case(
        {"HTTP_PROXY": "{A}", "REQUEST_METHOD": "GET"}, ["http://127.0.0.1:{T}/"], ["direct"]
    ),
    "no_proxy_ip": Case(
        {"ALL_PROXY": "{C}", "NO_PROXY": "127.0.0.1"},
        ["http://127.0.0.1:{T}/", "http://localhost:{T}/"],
        ["direct", "C"],
    ),
    "no_proxy_cidr": Case(
        {"ALL_PROXY": "{C}", "no_proxy": "10.0.0.0/8, 127.0.0.0/8"},
        ["https://127.0.0.1:{T}/", "http://localhost:{T}/"],
        ["direct", "C"],
    ),
    "no_proxy_localhost": Case(
        {"HTTP_PROXY": "{A}", "NO_PROXY": "LocalHost"},
        ["http://localhost:{T}/", "http://127.0.0.1:{T}/"],
        ["direct", "A"],
    ),
    "no_proxy_ip_and_port": Case(
        {"HTTP_PROXY": "{A}", "NO_PROXY": "127.0.0.1:{T}"},
        ["http://127.0.0.1:{T}/", "http://127.0.0.1:{c}/"],
        ["direct", "A"],
    ),
    "no_proxy_scheme": Case(
        {"ALL_PROXY": "{C}", "NO_PROXY": "http://127.0.0.1"},
        ["http://127.0.0.1:{T}/", "https://127.0.0.1:{T}/"],
        ["direct", "C"],
    ),
    "no_proxy_domains": Case(
        {"HTTP_PROXY": "{A}", "NO_PROXY": ".corp.invalid,other.invalid"},
        [
            "http://api.corp.invalid/",
            "http://corp.invalid/",
            "http://other.invalid/",
            "http://api.other.invalid/",
            "http://another.invalid/",
        ],
        ["direct", "A", "direct", "direct", "A"],
    ),
    "no_proxy_wildcard_subdomains": Case(
        {"HTTPS_PROXY": "{B}", "NO_PROXY": "*.corp.invalid"},
        ["https://api.corp.invalid/", "https://corp.invalid/"],
        ["direct", "B"],
    ),
    "no_proxy_star": Case(
        {"ALL_PROXY": "{C}", "NO_PROXY": "localhost,*"}, ["http://127.0.0.1:{T}/"], ["direct"]
    ),
    "no_proxy_unparsable_entry_ignored": Case(
        {"HTTP_PROXY": "{A}", "NO_PROXY": "10.0.0.0/33,localhost"},
        ["http://localhost:{T}/", "http://127.0.0.1:{T}/"],
        ["direct", "A"],
    ),
    "proxy_credentials": Case(
        {"HTTP_PROXY": "http://user:secret@127.0.0.1:{a}"}, ["http://127.0.0.1:{T}/"], ["A"]
    ),
    # Nothing listens at {free}: no proxy sees the request, which fails to connect.
    "unreachable_proxy": Case(
        {"HTTPS_PROXY": "http://127.0.0.1:{free}"}, ["https://localhost:{T}/"], ["direct"]
    ),
    # httpx2 needs socksio for SOCKS: without it, making the client fails; with it, nothing listens.
    "socks": Case({"ALL_PROXY": "socks5://127.0.0.1:{free}"}, ["http://127.0.0.1:{T}/"], ["direct"]),
    "unknown_proxy_scheme": Case(
        {"HTTPS_PROXY": "ftp://127.0.0.1:{a}"}, ["http://127.0.0.1:{T}/"], ["direct"]
    ),
}


@pytest.fixture(scope="module")
def recorders() -> Iterator[Recorders]:
    with RecordingProxy() as a, RecordingProxy() as b, RecordingProxy() as c, RecordingProxy() as t:
        yield {"A": a, "B": b, "C": c, "T": t}


Recorders = dict[str, RecordingProxy]
Outcome = tuple[str, dict[str, list[Seen]]]  # the result, and what each recorder that saw it saw
Outcomes = list[Outcome] | str


async def send(client: httpx2.AsyncClient, url: str, recorders: Recorders) -> Outcome:
    for recorder in recorders.values():
        recorder.seen.clear()
    try:
        response = await client.get(url)
        result = f"{response.status_code} {response.text}"
    except httpx2.HTTPError as exc:
        result = type(exc).__name__
    return result, {name: list(recorder.seen) for name, recorder in recorders.items() if recorder.seen}


async def outcomes(make: Callable[[], httpx2.AsyncClient], urls: list[str], recorders: Recorders) -> Outcomes:
    """Each URL's outcome through a client made now (after the environment), or why making it failed."""
    try:
        client = make()
    except (ImportError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    async with client:
        return [await send(client, url, recorders) for url in urls]


def route(outcome: Outcome) -> str:
    """The proxy that saw the request, or "direct" when none did."""
    return next((name for name in outcome[1] if name != "T"), "direct")


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_picks_the_same_proxy_as_httpx2(
    case: Case, recorders: Recorders, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c, t = (recorders[name] for name in "ABCT")
    fill = {"A": a.url, "B": b.url, "C": c.url, "a": a.port, "c": c.port, "T": t.port, "free": free_port()}
    for name, value in case.env.items():
        monkeypatch.setenv(name, value.format(**fill))
    urls = [url.format(**fill) for url in case.urls]

    theirs = asyncio.run(outcomes(lambda: httpx2.AsyncClient(timeout=TIMEOUT), urls, recorders))
    ours = asyncio.run(outcomes(lambda: http_client(TIMEOUT), urls, recorders))

    assert ours == theirs
    if not isinstance(theirs, str):  # and the case tests what it says it does
        assert [route(outcome) for outcome in theirs] == case.routes, theirs


def test_a_worker_process_calls_the_llm_through_the_proxy(
    settings: Settings, sim: Simulator, proxy: RecordingProxy
) -> None:
    worker = WorkerProcess(settings, sim, HTTP_PROXY=proxy.url)
    try:
        handle = enqueue(example.example_request(), settings=settings)
        stream = list(events(handle, settings=settings, timeout=30))
    finally:
        worker.stop()

    assert [e.type for e in stream] == ["started"] + ["item"] * 10 + ["done"]
    assert proxy.lines == [f"POST {sim.base_url}/chat/completions HTTP/1.1"]
