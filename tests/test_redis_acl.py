"""deploy/redis/users.acl against a real redis-server: each role does its job, and no more.

The server loads a temporary copy of the ACL file with the placeholder passwords replaced, plus an
`admin` user of the test's own (for ACL LOG); the producer, the gateway and a real `rankstream
worker` process connect as their own users.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from conftest import (
    Simulator,
    WorkerProcess,
    assert_complete_ranking,
    finished_stream,
    make_settings,
    wait_for,
)

import producer
from rankstream import keys, scripts
from rankstream.dev import example
from rankstream.dev.processes import stop
from rankstream.dev.redis_server import find_redis_server, free_port

ACL_FILE = Path(__file__).resolve().parents[1] / "deploy" / "redis" / "users.acl"
ROLES = ("producer", "gateway", "worker")


class AclServer:
    """redis-server running a copy of users.acl with real passwords."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.passwords = {role: secrets.token_hex(16) for role in (*ROLES, "admin")}
        text = ACL_FILE.read_text()
        for role in ROLES:
            text = text.replace(f">CHANGE-ME-{role}-password", f">{self.passwords[role]}")
        text += f"user admin on >{self.passwords['admin']} ~* &* +@all\n"
        acl = directory / "users.acl"
        acl.write_text(text)
        self.process = subprocess.Popen(
            [
                find_redis_server(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--aclfile",
                str(acl),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(directory),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.admin = redis.Redis.from_url(self.url("admin"))
        wait_for(self._up, 10, "redis-server with the ACL file")

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(
                f"redis-server exited: {self.process.stdout.read().decode() if self.process.stdout else ''}"
            )
        try:
            return bool(self.admin.ping())
        except redis.ConnectionError:
            return False

    def url(self, role: str) -> str:
        return f"redis://{role}:{self.passwords[role]}@127.0.0.1:{self.port}/0"

    def client(self, role: str) -> redis.Redis:
        return redis.Redis.from_url(self.url(role))

    def denials(self, role: str) -> list[dict[str, Any]]:
        """ACL LOG entries of one user: every command or key the ACL refused it."""
        log: list[dict[str, Any]] = self.admin.acl_log()
        return [entry for entry in log if entry["username"] == role]

    def stop(self) -> None:
        self.admin.close()
        stop(self.process)


@pytest.fixture(scope="module")
def acl_server() -> Iterator[AclServer]:
    version = subprocess.run([find_redis_server(), "--version"], capture_output=True, text=True).stdout
    major = re.search(r"v=(\d+)", version)
    if not major or int(major.group(1)) < 7:
        pytest.skip(
            f"the ACL file uses Redis 7 syntax (selectors, %R~); this redis-server is {version.strip()}"
        )
    with tempfile.TemporaryDirectory() as directory:
        server = AclServer(Path(directory))
        yield server
        server.stop()


@pytest.fixture
def clean_log(acl_server: AclServer) -> AclServer:
    acl_server.admin.acl_log_reset()
    return acl_server


def settings_for(server: AclServer, role: str, queue: str) -> Any:
    return make_settings(server.url(role), queue=queue)


def test_a_gateway_process_serves_a_ranking_as_the_gateway_user(clean_log: AclServer) -> None:
    """The real gateway, as its ACL user: enqueue, status, its shared blocking read, its wake-up
    stream, cancel; nothing refused."""
    from support.gateway import Gateway
    from test_gateway import events_url, read_sse, start

    queue = f"acl-{uuid.uuid4().hex[:8]}"
    sim = Simulator()
    worker = WorkerProcess(settings_for(clean_log, "worker", queue), sim)
    gateway = Gateway(settings_for(clean_log, "gateway", queue))
    try:
        first, second = start(gateway), start(gateway)  # the second joins a hub already reading
        kinds = [[e.event for e in read_sse(events_url(gateway, job_id))] for job_id in (first, second)]
        assert kinds == [["started"] + ["item"] * 10 + ["done"]] * 2
        assert httpx.get(f"{gateway.url}/v1/rankings/{first}").json()["status"] == "done"
        assert httpx.delete(f"{gateway.url}/v1/rankings/{first}").status_code == 202
    finally:
        output = gateway.stop() + worker.stop()
        sim.stop()
    assert {role: clean_log.denials(role) for role in ROLES} == {r: [] for r in ROLES}, output


class TestTheFile:
    def test_passwords_are_marked_placeholders_and_default_is_off(self) -> None:
        lines = [line.split() for line in ACL_FILE.read_text().splitlines() if line.strip()]
        users = {words[1]: words for words in lines}
        assert all(words[0] == "user" for words in lines)  # redis-server refuses anything else, comments too
        assert set(users) == {"default", *ROLES}
        assert "off" in users["default"] and not any(w.startswith(">") for w in users["default"])
        for role in ROLES:
            assert [w for w in users[role] if w.startswith((">", "#"))] == [f">CHANGE-ME-{role}-password"]

    def test_no_anonymous_access(self, acl_server: AclServer) -> None:
        anonymous = redis.Redis(port=acl_server.port)
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        anonymous.close()


class TestEachRoleDoesItsJob:
    @pytest.mark.parametrize("role", ["producer", "gateway"])
    def test_enqueues_reads_status_and_events_and_cancels(self, clean_log: AclServer, role: str) -> None:
        settings = settings_for(clean_log, role, f"acl-{uuid.uuid4().hex[:8]}")
        handle = producer.enqueue(example.example_request(), settings=settings)
        again = producer.enqueue(example.example_request(request_id="acl-" + role), settings=settings)
        assert producer.enqueue(example.example_request(request_id="acl-" + role), settings=settings) == again

        assert producer.status(handle, settings=settings).status == "queued"
        assert producer.cancel(handle, settings=settings) is True
        stream = list(producer.events(handle, settings=settings, timeout=10))
        assert [e.type for e in stream] == ["error"] and stream[0].data["code"] == "cancelled"
        assert producer.status(handle, settings=settings).status == "error"
        assert producer.cancel(again, settings=settings) is True
        assert clean_log.denials(role) == []

    @pytest.mark.parametrize("rq_status", ["started", "finished", "failed", "deferred", "scheduled"])
    def test_cancel_also_passes_when_rq_moved_the_job_on(self, clean_log: AclServer, rq_status: str) -> None:
        """A worker may take the RQ job between cancel's check and its drop from RQ's queue: RQ then
        cleans the registry of the status it finds, which the producer's keys must cover."""
        settings = settings_for(clean_log, "producer", f"acl-{uuid.uuid4().hex[:8]}")
        handle = producer.enqueue(example.example_request(), settings=settings)
        clean_log.admin.hset(f"rq:job:{handle.job_id}", "status", rq_status)
        assert producer.cancel(handle, settings=settings) is True
        assert clean_log.admin.hget(f"rq:job:{handle.job_id}", "status") == b"canceled"
        assert clean_log.denials("producer") == []

    def test_worker_runs_the_example_end_to_end_and_the_gateway_reads_it(self, clean_log: AclServer) -> None:
        queue = f"acl-{uuid.uuid4().hex[:8]}"
        sim = Simulator()
        worker = WorkerProcess(settings_for(clean_log, "worker", queue), sim)
        try:
            handle = producer.enqueue(
                example.example_request(), settings=settings_for(clean_log, "producer", queue)
            )
            gateway = settings_for(clean_log, "gateway", queue)
            events = list(producer.events(handle, settings=gateway, timeout=30))
            assert [e.type for e in events] == ["started"] + ["item"] * 10 + ["done"]
            with clean_log.client("gateway") as connection:
                assert_complete_ranking(finished_stream(connection, handle.job_id))
            status = producer.status(handle, settings=gateway)
            assert status.status == "done" and len(status.items) == 10
            # the worker's own bookkeeping after the job (heartbeats, registries, results) went through too
            wait_for(
                lambda: clean_log.admin.hget(f"rq:job:{handle.job_id}", "status") == b"finished",
                10,
                "RQ to record the job finished",
            )
            with clean_log.client("worker") as connection:
                assert (
                    connection.llen(f"rq:queue:{queue}") == 0 and connection.scard(f"rq:workers:{queue}") == 1
                )
            metrics = httpx.get(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=5)
            assert metrics.status_code == 200 and "rankstream" in metrics.text  # queue depth, workers
        finally:
            output = worker.stop()
            sim.stop()
        assert {role: clean_log.denials(role) for role in ROLES} == {r: [] for r in ROLES}, output


def _refusals(job_id: str, other_queue: str) -> dict[str, Callable[[redis.Redis], Any]]:
    ranks, state = keys.published(job_id), keys.state(job_id)
    return {
        "FLUSHALL": lambda c: c.flushall(),
        "FLUSHDB": lambda c: c.flushdb(),
        "CONFIG": lambda c: c.config_get("*"),
        "SHUTDOWN": lambda c: c.execute_command("SHUTDOWN", "NOSAVE"),
        "ACL": lambda c: c.acl_setuser("intruder", enabled=True, commands=["+@all"], keys=["*"]),
        "KEYS": lambda c: c.keys("*"),
        "SAVE": lambda c: c.save(),
        "MONITOR": lambda c: c.execute_command("MONITOR"),
        "CLIENT KILL": lambda c: c.client_kill_filter(skipme=True, _type="normal"),
        "EVAL": lambda c: c.eval("return 1", 0),
        "SCRIPT FLUSH": lambda c: c.script_flush(),
        "FUNCTION": lambda c: c.function_list(),
        "a key outside rq:* and rankstream:*": lambda c: c.set("someone-else:key", "1"),
        "write the ranks hash": lambda c: c.hset(ranks, "9", "1:1"),
        "read the ranks hash": lambda c: c.hgetall(ranks),
        "delete the job's keys": lambda c: c.delete(state),
        "RQ's worker registry": lambda c: c.sadd(f"rq:workers:{other_queue}", "rq:worker:fake"),
        "the leases": lambda c: c.zadd(keys.leases(other_queue), {job_id: 0}),
        "RQ's command channel": lambda c: c.publish("rq:pubsub:some-worker", '{"command": "shutdown"}'),
    }


REFUSED = {
    "producer": [*_refusals("x", "q")],
    "gateway": [*_refusals("x", "q")],
    "worker": [
        "FLUSHALL",
        "FLUSHDB",
        "CONFIG",
        "SHUTDOWN",
        "ACL",
        "KEYS",
        "SAVE",
        "MONITOR",
        "CLIENT KILL",
        "EVAL",
        "SCRIPT FLUSH",
        "FUNCTION",
        "a key outside rq:* and rankstream:*",
    ],
}


class TestEachRoleIsRefusedOutsideItsJob:
    @pytest.mark.parametrize(("role", "action"), [(r, a) for r, actions in REFUSED.items() for a in actions])
    def test_refused(self, acl_server: AclServer, role: str, action: str) -> None:
        settings = settings_for(acl_server, "producer", f"acl-{uuid.uuid4().hex[:8]}")
        handle = producer.enqueue(example.example_request(), settings=settings)  # a live job to aim at
        acl_server.admin.hset(keys.published(handle.job_id), "1", "1:1")
        with acl_server.client(role) as connection, pytest.raises(redis.exceptions.NoPermissionError):
            _refusals(handle.job_id, settings.queue)[action](connection)
        assert acl_server.admin.exists(keys.state(handle.job_id))  # nothing was broken on the way
        assert acl_server.admin.hgetall(keys.published(handle.job_id)) == {b"1": b"1:1"}
        assert acl_server.admin.ping()


class TestScriptsRunWithTheCallersRights:
    """ACLs cannot say which script a user may run (EVALSHA / SCRIPT LOAD take any script), but every
    call inside a script is checked against the caller's ACL: the producer's and the gateway's scripts
    (REQUEST_CANCEL, FINISH) go through, the worker's fail where they touch the ranks hash.

    redis-server 7.0 reports a refusal inside a script as a plain error ("The user executing the script
    can't access ..."), not as NOPERM, so redis-py raises ResponseError here, not NoPermissionError.
    """

    @pytest.mark.parametrize("role", ["producer", "gateway"])
    @pytest.mark.parametrize("script", ["PUBLISH_ITEM", "START"])
    def test_the_workers_scripts_are_refused_at_the_ranks_hash(
        self, acl_server: AclServer, role: str, script: str
    ) -> None:
        settings = settings_for(acl_server, "producer", f"acl-{uuid.uuid4().hex[:8]}")
        job_id = producer.enqueue(example.example_request(), settings=settings).job_id
        acl_server.admin.hset(keys.published(job_id), "1", "1:1")
        args = {"PUBLISH_ITEM": ["9", '"x":1}', 60, 0, 1], "START": [60, job_id, "m", 0, "t"]}[script]
        with acl_server.client(role) as connection:
            sha = connection.script_load(getattr(scripts, script))
            with pytest.raises(redis.exceptions.ResponseError, match="can't access"):
                connection.evalsha(sha, 3, *keys.job_keys(job_id), *args)
        assert acl_server.admin.hgetall(keys.published(job_id)) == {b"1": b"1:1"}
        if script == "PUBLISH_ITEM":  # refused at its first look at the ranks hash, before any write
            assert acl_server.admin.xlen(keys.events(job_id)) == 0
