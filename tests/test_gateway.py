"""The HTTP gateway (producer/gateway.py): REST and server-sent events, against real processes.

A simulator paced so that a ranking takes about a second, a worker, and `rankstream gateway`
as a child process; the client is httpx, reading the SSE stream as a browser's EventSource
would (tests/test_page.py drives a real browser).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psutil
import pytest
import redis
from conftest import Simulator, WorkerProcess, make_settings
from support.gateway import Gateway

from rankstream import keys
from rankstream.dev import example
from rankstream.dev.processes import wait_for
from rankstream.settings import Settings

TERMINAL = ("done", "error")


@dataclass(frozen=True)
class SSE:
    id: str
    event: str
    data: dict[str, Any] | None


def read_sse(
    url: str, last_event_id: str | None = None, stop_after: int | None = None, timeout: float = 30
) -> list[SSE]:
    """The events of one SSE connection, until the server closes it or `stop_after` events came."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[SSE] = []
    with httpx.stream("GET", url, headers=headers, timeout=timeout) as answer:
        assert answer.status_code == 200, answer.read()
        assert answer.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in answer.iter_lines():
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            if "event" in fields:
                events.append(
                    SSE(fields["id"], fields["event"], httpx.Response(200, text=fields["data"]).json())
                )
                if stop_after is not None and len(events) >= stop_after:
                    break
            fields = {}
    return events


def items(events: list[SSE]) -> list[SSE]:
    return [e for e in events if e.event == "item"]


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[Simulator]:
    simulator = Simulator(ttft=0.2, tokens_per_second=80)  # the example ranking takes ~1.5 s
    yield simulator
    simulator.stop()


@pytest.fixture(scope="module")
def gateway_settings(redis_url: str) -> Settings:
    return make_settings(redis_url)


@pytest.fixture(scope="module")
def gateway_worker(gateway_settings: Settings, slow_sim: Simulator) -> Iterator[WorkerProcess]:
    process = WorkerProcess(gateway_settings, slow_sim)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def gateway(gateway_settings: Settings, gateway_worker: WorkerProcess) -> Iterator[Gateway]:
    process = Gateway(gateway_settings, RANKSTREAM_SSE_KEEPALIVE="0.3")
    yield process
    process.stop()


def post(gateway: Gateway, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/rankings", json=body, headers=headers, timeout=10)


def start(gateway: Gateway, **overrides: Any) -> str:
    answer = post(gateway, example.example_request(**overrides).model_dump(mode="json"))
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["job_id"]
    return job_id


def events_url(gateway: Gateway, job_id: str) -> str:
    return f"{gateway.url}/v1/rankings/{job_id}/events"


def assert_whole(events: list[SSE]) -> None:
    """One ranking of the example, in order, each product once, ending with done."""
    ranked = items(events)
    assert [e.data["rank"] for e in ranked if e.data] == list(range(1, 11))
    assert sorted(e.data["product_id"] for e in ranked if e.data) == sorted(str(n) for n in range(1, 11))
    assert events[-1].event == "done" and [e.event for e in events].count("done") == 1
    assert len({e.id for e in events}) == len(events)


class TestRankingsOverHTTP:
    def test_a_ranking_is_accepted_with_its_handle_and_streams_to_its_end(self, gateway: Gateway) -> None:
        answer = post(gateway, example.example_request().model_dump(mode="json"))

        assert answer.status_code == 202
        handle = answer.json()
        assert handle["stream_key"] == keys.events(handle["job_id"])
        events = read_sse(events_url(gateway, handle["job_id"]))
        assert events[0].event == "started"
        assert_whole(events)

    def test_the_status_tells_the_items_and_timings(self, gateway: Gateway) -> None:
        job_id = start(gateway)
        read_sse(events_url(gateway, job_id))

        status = httpx.get(f"{gateway.url}/v1/rankings/{job_id}").json()
        assert status["status"] == "done" and len(status["items"]) == 10
        assert status["timings"]["first_item"] > 0

    def test_a_bad_request_is_422_naming_the_field_and_makes_no_job(
        self, gateway: Gateway, gateway_settings: Settings, connection: redis.Redis
    ) -> None:
        queued = connection.llen(f"rq:queue:{gateway_settings.queue}")
        body = example.example_request().model_dump(mode="json")
        body["products"][3]["product_id"] = ""

        answer = post(gateway, body)

        assert answer.status_code == 422
        assert ["body", "products", 3, "product_id"] in [e["loc"] for e in answer.json()["detail"]]
        assert connection.llen(f"rq:queue:{gateway_settings.queue}") == queued

    def test_a_request_id_is_one_job_and_another_body_under_it_is_409(self, gateway: Gateway) -> None:
        body = example.example_request(request_id=f"page-{time.time_ns()}").model_dump(mode="json")
        first, again = post(gateway, body), post(gateway, body)
        body["top_k"] = 3
        other = post(gateway, body)

        assert first.status_code == again.status_code == 202
        assert first.json() == again.json()
        assert other.status_code == 409 and "request_id" in other.json()["detail"]

    def test_an_unknown_job_is_404_and_an_expired_one_410(self, gateway: Gateway) -> None:
        unknown, expired = keys.new_job_id(), keys.new_job_id(now=time.time() - 2 * 3600)
        for path in ("", "/events"):
            assert httpx.get(f"{gateway.url}/v1/rankings/{unknown}{path}").status_code == 404
            assert httpx.get(f"{gateway.url}/v1/rankings/{expired}{path}").status_code == 410
            assert httpx.get(f"{gateway.url}/v1/rankings/not-a-job{path}").status_code == 404
        assert httpx.delete(f"{gateway.url}/v1/rankings/{unknown}").status_code == 404

    def test_cancel_ends_the_job_with_error_cancelled(self, gateway: Gateway) -> None:
        job_id = start(gateway)
        read_sse(events_url(gateway, job_id), stop_after=2)  # started, and the first item

        answer = httpx.delete(f"{gateway.url}/v1/rankings/{job_id}")

        assert answer.status_code == 202
        assert answer.json() == {"job_id": job_id, "cancel_requested": True, "ended": False}  # it was running
        events = read_sse(events_url(gateway, job_id))
        assert events[-1].event == "error" and events[-1].data == events[-1].data | {"code": "cancelled"}
        assert len(items(events)) < 10

    def test_a_queued_job_is_known_and_its_stream_stays_open_with_keep_alives(
        self, gateway_settings: Settings, redis_url: str
    ) -> None:
        idle = make_settings(redis_url)  # a queue no worker serves
        with_no_worker = Gateway(idle, RANKSTREAM_SSE_KEEPALIVE="0.2")
        try:
            job_id = start(with_no_worker)
            assert httpx.get(f"{with_no_worker.url}/v1/rankings/{job_id}").json()["status"] == "queued"
            with httpx.stream("GET", events_url(with_no_worker, job_id), timeout=10) as answer:
                assert answer.status_code == 200
                lines = answer.iter_lines()
                assert next(lines) == "retry: 1000"
                assert next(line for line in lines if line) == ": keep-alive"
        finally:
            with_no_worker.stop()


class TestResumingAStream:
    def test_a_stream_cut_after_three_items_resumes_with_no_gap_and_no_duplicate(
        self, gateway: Gateway
    ) -> None:
        job_id = start(gateway)
        first = read_sse(events_url(gateway, job_id), stop_after=4)  # started and three items
        assert len(items(first)) == 3

        rest = read_sse(events_url(gateway, job_id), last_event_id=first[-1].id)

        assert rest and rest[0].id > first[-1].id
        assert_whole(first + rest)

    def test_a_finished_job_replays_and_resuming_after_done_ends_at_once(self, gateway: Gateway) -> None:
        job_id = start(gateway)
        whole = read_sse(events_url(gateway, job_id))

        assert read_sse(events_url(gateway, job_id)) == whole
        assert read_sse(events_url(gateway, job_id), last_event_id=whole[-1].id, timeout=5) == []

    def test_a_gateway_killed_and_restarted_is_resumed_with_every_item_once(
        self, gateway_settings: Settings, gateway_worker: WorkerProcess
    ) -> None:
        first_gateway = Gateway(gateway_settings)
        job_id = start(first_gateway)
        seen = read_sse(events_url(first_gateway, job_id), stop_after=3)
        first_gateway.process.kill()  # SIGKILL: nothing is closed cleanly
        first_gateway.stop()

        second = Gateway(gateway_settings, port=first_gateway.port)
        try:
            rest = read_sse(events_url(second, job_id), last_event_id=seen[-1].id)
        finally:
            second.stop()
        assert_whole(seen + rest)


class TestManySubscribers:
    def test_fifty_subscribers_to_one_job_get_the_same_sequence(self, gateway: Gateway) -> None:
        job_id = start(gateway)

        async def follow(client: httpx.AsyncClient) -> list[tuple[str, str]]:
            seen: list[tuple[str, str]] = []
            async with client.stream("GET", events_url(gateway, job_id)) as answer:
                event_id = ""
                async for line in answer.aiter_lines():
                    if line.startswith("id: "):
                        event_id = line[4:]
                    elif line.startswith("event: "):
                        seen.append((event_id, line[7:]))
            return seen

        async def all_of_them() -> list[list[tuple[str, str]]]:
            limits = httpx.Limits(max_connections=60)
            async with httpx.AsyncClient(timeout=30, limits=limits) as client:
                return await asyncio.gather(*(follow(client) for _ in range(50)))

        sequences = asyncio.run(all_of_them())
        assert all(sequence == sequences[0] for sequence in sequences)
        assert [kind for _, kind in sequences[0]].count("item") == 10 and sequences[0][-1][1] == "done"

    def test_subscribers_to_many_jobs_share_the_gateways_redis_connections(self, redis_url: str) -> None:
        idle = Gateway(make_settings(redis_url))  # its queue has no worker: every stream stays open
        try:
            jobs = [start(idle) for _ in range(40)]
            subscribers, connections = asyncio.run(follow_at_once(idle, jobs, redis_url))
        finally:
            idle.stop()

        assert subscribers == 40
        # one blocking read for all, the gateway's bounded pool, and enqueue's threads: not one each
        assert connections <= 1 + 8 + 6


async def follow_at_once(gateway: Gateway, jobs: list[str], redis_url: str) -> tuple[int, int]:
    """Subscribe to every job at once; how many subscribers the gateway then has, on how many connections."""
    limits = httpx.Limits(max_connections=len(jobs) + 5)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client, contextlib.AsyncExitStack() as stack:
        for job_id in jobs:
            await stack.enter_async_context(client.stream("GET", events_url(gateway, job_id)))
        await asyncio.to_thread(
            wait_for, lambda: gateway.health()["subscribers"] >= len(jobs), 10, "every subscriber"
        )
        return gateway.health()["subscribers"], redis_connections(gateway, redis_url)


def redis_connections(gateway: Gateway, redis_url: str) -> int:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    process = psutil.Process(gateway.process.pid)
    owned = [process, *process.children(recursive=True)]
    return sum(
        1
        for proc in owned
        for conn in proc.net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == port and conn.status == psutil.CONN_ESTABLISHED
    )


class TestTheBearerToken:
    def test_post_and_delete_need_it_when_it_is_set_and_reads_do_not(
        self, gateway_settings: Settings, gateway_worker: WorkerProcess
    ) -> None:
        guarded = Gateway(gateway_settings, RANKSTREAM_GATEWAY_TOKEN="s3cret")
        try:
            body = example.example_request().model_dump(mode="json")
            refused = post(guarded, body)
            wrong = post(guarded, body, Authorization="Bearer nope")
            accepted = post(guarded, body, Authorization="Bearer s3cret")
            job_id = accepted.json()["job_id"]
            reads = httpx.get(f"{guarded.url}/v1/rankings/{job_id}").status_code
            delete = httpx.delete(f"{guarded.url}/v1/rankings/{job_id}").status_code
        finally:
            guarded.stop()

        assert (refused.status_code, wrong.status_code, accepted.status_code) == (401, 401, 202)
        assert refused.headers["www-authenticate"] == "Bearer"
        assert (reads, delete) == (200, 401)


def test_the_openapi_document_names_every_route(gateway: Gateway) -> None:
    document = httpx.get(f"{gateway.url}/openapi.json").json()
    assert set(document["paths"]) == {
        "/v1/rankings",
        "/v1/rankings/{job_id}",
        "/v1/rankings/{job_id}/events",
        "/healthz",
    }
    assert set(document["paths"]["/v1/rankings/{job_id}"]) == {"get", "delete"}


def test_cors_lets_the_configured_origins_call_and_no_other(
    gateway_settings: Settings, gateway_worker: WorkerProcess
) -> None:
    shop = "https://shop.example"
    open_to = Gateway(gateway_settings, RANKSTREAM_CORS_ORIGINS=f"{shop}, https://other.example")
    try:
        asked = {
            "Origin": shop,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        }
        preflight = httpx.options(f"{open_to.url}/v1/rankings", headers=asked)
        stranger = httpx.options(
            f"{open_to.url}/v1/rankings", headers={**asked, "Origin": "https://evil.example"}
        )
        plain = httpx.get(f"{open_to.url}/healthz", headers={"Origin": shop})
    finally:
        open_to.stop()

    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == shop
    assert "access-control-allow-origin" not in stranger.headers
    assert plain.headers["access-control-allow-origin"] == shop


def test_the_gateway_counts_subscribers_events_resumes_and_answers(gateway: Gateway) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(f"{gateway.url}/metrics").text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    before = scrape()
    job_id = start(gateway)
    first = read_sse(events_url(gateway, job_id), stop_after=3)
    read_sse(events_url(gateway, job_id), last_event_id=first[-1].id)
    after = scrape()

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert moved("rankstream_gateway_events_sent_total", type="item") >= 10
    assert moved("rankstream_gateway_events_sent_total", type="done") == 1
    assert moved("rankstream_gateway_resumes_total") == 1
    assert moved("rankstream_gateway_requests_total", route="/v1/rankings", method="POST", status="202") == 1
    assert (
        moved(
            "rankstream_gateway_requests_total",
            route="/v1/rankings/{job_id}/events",
            method="GET",
            status="200",
        )
        == 2
    )
    assert ("rankstream_gateway_subscribers", ()) in after
