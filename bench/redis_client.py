"""Section 6: the publisher's Redis client: the link, redis.asyncio, and a hand-written one.

Every client runs the job's three scripts (rankstream/scripts.py: START, then PUBLISH_ITEM per
item, then FINISH with a `done` event) on real job keys (rankstream.keys.job_keys) of a
private Redis, building the same arguments the worker's publisher builds:

- link: what the worker runs, `worker.publish.RedisScripts` + `Publisher` over
  `worker.redis_link.RedisLink` (one redis-py connection, pipelined, built as the worker builds
  it); the parser in use is checked and printed;
- redis.asyncio: the same `Publisher` calls over `redis.asyncio.Redis.from_url` with the
  worker's options (but a pool cap of 1,000: see `_redis_asyncio`), hiredis parser: what the
  publisher ran until 2026-12 (`_PoolScripts` speaks it);
- RESP client: `bench/resp_baseline.py` (the pipelined client the publisher used before that,
  one connection for every job), with a publisher of the same arguments and answers;
- redis.asyncio, pure-Python parser: the redis.asyncio client with `parser_class=` redis-py's
  own RESP parser instead of hiredis.

Each job's state hash is made first, as enqueue() leaves it (outside the clock), and each run
checks that its last job's stream holds every event: the calls measured are the ones that publish.

Two loads, each in one event loop, after a warm-up run (connections made, scripts loaded):

- one live stream: jobs one after another, items one at a time RESP_GAP apart, so each call
  meets a connection and a loop that have been idle, as in a real stream. CPU is
  `time.process_time()` around each awaited call (its reply's wake-up included), wall time
  `perf_counter()` around the same call, as the caller sees it;
- many live streams: STREAMS job coroutines at once, each running jobs of ITEMS items with
  random 20-100 ms gaps (the same random draws for every client). CPU is the whole run's
  `process_time()` less that of a floor run with the same coroutines and sleeps and no Redis
  calls, per job (START + ITEMS items + FINISH); wall time per item call as above.

Each figure is the median over runs of each run's figure (mean CPU, p50/p99 wall).
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis
import redis.asyncio
from redis._parsers import _AsyncRESP2Parser

from rankstream import keys, scripts
from rankstream.codes import EventType, Source
from rankstream.connections import client_options
from rankstream.models import Done, Timings
from worker.publish import Publisher, RedisScripts
from worker.redis_link import RedisLink

from .common import Row, percentile
from .resp_baseline import RespClient, Script

TTL = 600
MODEL = "bench"
RESP_GAP = 0.005  # between calls, one live stream
ITEMS = 10  # per job
STREAMS = 200  # job coroutines at once, many live streams
GAPS = (0.02, 0.1)  # between items, many live streams
RAMP = 0.5  # the streams' first jobs start spread over this many seconds
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # as worker/publish.py builds items


class JobPublisher(Protocol):
    async def start(self, model: str) -> Any: ...
    async def publish(self, items: list[tuple[str, dict[str, Any]]]) -> list[Any]: ...
    async def done(self, done: Done) -> bool: ...


class RespPublisher:
    """worker.publish.Publisher's calls, arguments and answers, over bench/resp_baseline.py."""

    SCRIPTS = (Script(scripts.START), Script(scripts.PUBLISH_ITEM), Script(scripts.FINISH))

    def __init__(self, client: RespClient, job_id: str, ttl: int) -> None:
        job_keys = keys.job_keys(job_id)
        self._client = client
        self._start, self._item, self._finish = (script.bind(job_keys) for script in self.SCRIPTS)
        self.job_id = job_id
        self._ttl = ttl
        self._token = secrets.token_hex(8)
        self._calls = 0
        self._number = 0

    async def start(self, model: str) -> Any:
        self._calls += 1
        args = [self._ttl, self.job_id, model, repr(time.time()), f"{self._token}:{self._calls}"]
        reply: Any = await self._client.evalsha(self._start, args)
        if len(reply) == 1:
            return reply[0].decode()
        number, published, enqueued = reply
        self._number = int(number)
        # The ids already published (a count in versions of START before 2026-12-01).
        done = frozenset(p.decode() for p in published) if isinstance(published, list) else int(published)
        return int(number), done, float(enqueued) if enqueued else None

    async def publish(self, items: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        (product_id, fields) = items[0]
        body = _JSON.encode({"product_id": product_id, **fields})
        args = [product_id, body[1:], self._ttl, repr(time.time()), self._number]
        reply: Any = await self._client.evalsha(self._item, args)
        value = reply[0]
        return [value if isinstance(value, int) else value.decode()]

    async def done(self, done: Done) -> bool:
        token = f"{self._token}:{EventType.DONE}"  # one token per terminal type, as the publisher has
        args = [str(EventType.DONE), done.model_dump_json(), self._ttl, repr(time.time()), token]
        return await self._client.evalsha(self._finish, args) is not None


class NoPublisher:
    """The floor: the same calls answered at once, nothing sent."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id

    async def start(self, model: str) -> Any:
        return 1, 0, None

    async def publish(self, items: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        return [1]

    async def done(self, done: Done) -> bool:
        return True


class _PoolLink:
    """The calls `Publisher` makes of its link, answered by a redis.asyncio client (its pool)."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client
        self._registered: dict[str, Any] = {}

    def _script(self, script: Any) -> Any:
        registered = self._registered.get(script.sha)
        if registered is None:
            registered = self._registered[script.sha] = self._client.register_script(script.source)
        return registered

    async def evalsha(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        return await self._script(script)(keys=keys, args=args)

    async def execute(self, *args: Any) -> Any:
        return await self._client.execute_command(*args)

    async def retrying(self, call: Callable[[], Awaitable[Any]]) -> Any:
        return await call()  # redis-py retries each command itself

    def send_script(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        return asyncio.ensure_future(self.evalsha(script, keys, args))  # several items: not measured here

    @staticmethod
    async def replies(futures: list[Any]) -> list[Any]:
        return [await future for future in futures]


@dataclass
class Client:
    name: str
    new_job: Callable[[str], JobPublisher]
    close: Callable[[], Awaitable[None]]
    connections: Callable[[], int] = lambda: 1
    parser: Callable[[], str] = lambda: ""


def _redis_asyncio(url: str, parser: type | None) -> Client:
    """The worker's client (worker/runtime.py), optionally with another parser."""
    options = client_options(url, 5.0, for_asyncio=True)
    # redis-py 8 caps a pool at 100 connections and fails the next call (MaxConnectionsError):
    # a cold pool under STREAMS streams needs more while it grows (each call in flight holds a
    # connection, and each new one costs a connect and a handshake). Raised here so the load
    # can be measured at all; how many it opened is printed.
    options["max_connections"] = 1000
    if parser is not None:
        options["parser_class"] = parser
    client = redis.asyncio.Redis.from_url(url, **options)
    redis_scripts = RedisScripts(_PoolLink(client))  # type: ignore[arg-type]
    pool: Any = client.connection_pool

    def parser_in_use() -> str:
        """The parser of a connection the pool made (checked, not assumed)."""
        return ", ".join(sorted({type(c._parser).__name__ for c in pool._available_connections}))

    return Client(
        "redis.asyncio",
        lambda job_id: Publisher(redis_scripts, job_id, TTL),
        client.aclose,
        lambda: len(pool._available_connections) + len(pool._in_use_connections),
        parser_in_use,
    )


def _link(url: str) -> Client:
    """The worker's link (worker/runtime.py)."""
    link = RedisLink(url, 5.0)
    redis_scripts = RedisScripts(link)

    def parser_in_use() -> str:
        session: Any = link._session
        return type(session.connection._parser).__name__ if session is not None else "?"

    return Client(
        "link", lambda job_id: Publisher(redis_scripts, job_id, TTL), link.aclose, lambda: 1, parser_in_use
    )


def _resp(url: str) -> Client:
    client = RespClient(url, RespPublisher.SCRIPTS)
    return Client("resp", lambda job_id: RespPublisher(client, job_id, TTL), client.close)


def _none() -> Client:
    async def close() -> None:
        return None

    return Client("none", NoPublisher, close, lambda: 0)


def _done(count: int) -> Done:
    return Done(count=count, rejected={}, timings=Timings(queue_wait=0.001, first_item=0.5, total=1.0))


def _fields(n: int) -> tuple[str, dict[str, Any]]:
    return str(n), {"product_name": f"Generic product {n} - plain and unremarkable", "source": Source.LLM}


@dataclass
class Sample:
    item_cpu: list[float] = field(default_factory=list)
    job_cpu: list[float] = field(default_factory=list)
    item_wall: list[float] = field(default_factory=list)
    run_cpu: float = 0.0
    jobs: int = 0


async def _timed(call: Awaitable[Any], sample: Sample, item: bool) -> float:
    cpu, wall = time.process_time(), time.perf_counter()
    await call
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if item:
        sample.item_cpu.append(cpu)
        sample.item_wall.append(wall)
    return cpu


def _enqueued(admin: redis.Redis, count: int) -> list[str]:
    """Job ids with their state hash, as enqueue() leaves them (the scripts refuse a job without one)."""
    ids = [keys.new_job_id() for _ in range(count)]
    with admin.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hset(keys.state(job_id), mapping={"enqueued_at": repr(time.time()), "status": "queued"})
            pipe.expire(keys.state(job_id), TTL)
        pipe.execute()
    return ids


def _check_published(admin: redis.Redis, client: Client, job_id: str) -> None:
    """The calls measured did publish (checked, not assumed): started, every item, done."""
    if client.name != "none" and admin.xlen(keys.events(job_id)) != ITEMS + 2:
        raise RuntimeError(
            f"{client.name}: job {job_id} did not publish its {ITEMS} items: the scripts refused"
        )


async def one_stream(client: Client, jobs: int, admin: redis.Redis) -> Sample:
    sample = Sample()
    ids = _enqueued(admin, jobs)
    for job_id in ids:
        job = client.new_job(job_id)
        await asyncio.sleep(RESP_GAP)
        cpu = await _timed(job.start(MODEL), sample, False)
        for n in range(1, ITEMS + 1):
            await asyncio.sleep(RESP_GAP)
            cpu += await _timed(job.publish([_fields(n)]), sample, True)
        await asyncio.sleep(RESP_GAP)
        cpu += await _timed(job.done(_done(ITEMS)), sample, False)
        sample.job_cpu.append(cpu)
    _check_published(admin, client, ids[-1])
    sample.jobs = jobs
    return sample


async def many_streams(client: Client, jobs_each: int, seed: int, admin: redis.Redis) -> Sample:
    sample = Sample()
    made = _enqueued(admin, STREAMS * jobs_each)  # before the clock starts
    ids = iter(made)

    async def stream(rng: random.Random) -> None:
        await asyncio.sleep(rng.uniform(0, RAMP))  # jobs arrive spread out, not all in one instant
        for _ in range(jobs_each):
            job = client.new_job(next(ids))
            await job.start(MODEL)
            for n in range(1, ITEMS + 1):
                await asyncio.sleep(rng.uniform(*GAPS))
                start = time.perf_counter()
                await job.publish([_fields(n)])
                sample.item_wall.append(time.perf_counter() - start)
            await job.done(_done(ITEMS))

    rngs = [random.Random(seed * 100_000 + i) for i in range(STREAMS)]
    gc.collect()
    cpu = time.process_time()
    await asyncio.gather(*(stream(rng) for rng in rngs))
    sample.run_cpu = time.process_time() - cpu
    sample.jobs = STREAMS * jobs_each
    _check_published(admin, client, made[-1])
    return sample


@dataclass
class Result:
    """Per client: each run's figures, seconds."""

    one_item_cpu: list[float] = field(default_factory=list)
    one_job_cpu: list[float] = field(default_factory=list)
    one_p50: list[float] = field(default_factory=list)
    one_p99: list[float] = field(default_factory=list)
    many_job_cpu: list[float] = field(default_factory=list)  # the run's CPU per job, floor not taken off
    many_p50: list[float] = field(default_factory=list)
    many_p99: list[float] = field(default_factory=list)
    connections: int = 0


async def _measure(redis_url: str, runs: int, one_jobs: int, many_jobs: int) -> dict[str, Result]:
    clients = {
        "link": _link(redis_url),
        "hiredis": _redis_asyncio(redis_url, None),
        "resp": _resp(redis_url),
        "python": _redis_asyncio(redis_url, _AsyncRESP2Parser),
        "floor": _none(),
    }
    results = {name: Result() for name in clients}
    admin = redis.Redis.from_url(
        redis_url
    )  # makes the jobs' state, as enqueue() does, and checks the streams
    try:
        for client in clients.values():  # warm: connections, scripts, code paths
            await one_stream(client, 2, admin)
            await many_streams(client, 1, seed=0, admin=admin)
        order = list(clients)
        for run in range(runs):
            order = order[1:] + order[:1]  # who goes first changes from run to run
            for name in order:
                client, result = clients[name], results[name]
                if name != "floor":
                    gc.collect()
                    one = await one_stream(client, one_jobs, admin)
                    result.one_item_cpu.append(statistics.fmean(one.item_cpu))
                    result.one_job_cpu.append(statistics.fmean(one.job_cpu))
                    result.one_p50.append(percentile(one.item_wall, 50))
                    result.one_p99.append(percentile(one.item_wall, 99))
                many = await many_streams(client, many_jobs, seed=run + 1, admin=admin)
                result.many_job_cpu.append(many.run_cpu / many.jobs)
                if name != "floor":
                    result.many_p50.append(percentile(many.item_wall, 50))
                    result.many_p99.append(percentile(many.item_wall, 99))
            for name, client in clients.items():
                results[name].connections = max(results[name].connections, client.connections())
        print(f"# 6 redis client: link: parser {clients['link'].parser()}, 1 connection")
        for name in ("hiredis", "python"):
            print(
                f"# 6 redis client: {name}: parser {clients[name].parser()}, {results[name].connections} connections"
            )
        print(f"# 6 redis client: resp: {results['resp'].connections} connection")
    finally:
        for client in clients.values():
            await client.close()
        admin.close()
    return results


def measure(redis_url: str, runs: int, quick: bool = False) -> list[Row]:
    results = asyncio.run(
        _measure(redis_url, runs, one_jobs=10 if quick else 30, many_jobs=1 if quick else 2)
    )
    us = 1e6

    def med(name: str, attr: str) -> float:
        return statistics.median(getattr(results[name], attr)) * us

    floor = med("floor", "many_job_cpu")
    rows: list[Row] = []

    def add(name: str, attr: str, fmt: str, net: bool = False) -> None:
        ours = med("link", attr) - (floor if net else 0)
        others = [
            ("resp", "RESP client"),
            ("hiredis", "redis.asyncio, hiredis"),
            ("python", "redis.asyncio, Python parser"),
        ]
        for n, (other, label) in enumerate(others):
            theirs = med(other, attr) - (floor if net else 0)
            rows.append(
                Row(
                    "6 redis client" if n == 0 else "",
                    name if n == 0 else "",
                    fmt.format(ours) if n == 0 else "",
                    f"{fmt.format(theirs)} ({label})",
                    _vs(ours, theirs),
                )
            )

    add("1 stream: CPU per item (us)", "one_item_cpu", "{:.1f}")
    add("1 stream: CPU per job, START+10 items+FINISH (us)", "one_job_cpu", "{:.0f}")
    add("1 stream: item call p50 (us)", "one_p50", "{:.0f}")
    add("1 stream: item call p99 (us)", "one_p99", "{:.0f}")
    add(f"{STREAMS} streams: CPU per job, net of floor (us)", "many_job_cpu", "{:.0f}", net=True)
    rows.append(Row("", "", "", f"{floor:.0f} (floor: the same coroutines, no Redis)", ""))
    add(f"{STREAMS} streams: item call p50 (us)", "many_p50", "{:.0f}")
    add(f"{STREAMS} streams: item call p99 (us)", "many_p99", "{:.0f}")
    return rows


def _vs(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs > 0 else ""
