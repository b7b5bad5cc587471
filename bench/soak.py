"""Soak: many example jobs through 4 workers while workers are SIGKILLed and ~20 % of LLM calls fail.

A private Redis, the LLM simulator as a process (`--ttft 0.3 --tokens-per-second 60`) and 4
`rankstream worker` processes on one queue (RANKSTREAM_CONCURRENCY=50, LEASE_SECONDS=6,
IDLE_TIMEOUT=2, FIRST_TOKEN_TIMEOUT=3, MAX_ATTEMPTS=3). Then, at once:

- the example job is enqueued `--jobs` times at `--rate` per second;
- a thread keeps the simulator's faults at about `--fault-share` of the requests it has served
  (`GET /sim/requests`): whenever the share falls short, a random fault for the next request
  (`POST /sim/faults {"fault": F, "count": 1}`);
- every `--kill-every` seconds, while jobs are being enqueued and a little after, a random worker
  is SIGKILLed and replaced (the replacement registered with RQ before the next kill); the jobs it
  was running (RQ's job hash: status `started`, `worker_name` the dead worker's) are noted.

Then it waits (within `--seconds` of the start) for every job's terminal event and checks each
stream: exactly one terminal event, and it is the last entry; no product_id twice among the
items; ranks 1..n in stream order. It prints the counts and the violations, and the longest
time from a kill to the terminal event of a job that was running on the killed worker.
Exit status 1 if a check failed or a job never ended.

`make soak` runs it (`.venv/bin/python -m bench.soak`); `--jobs 200 --seconds 90` is a short run.
Only 127.0.0.1 is spoken to; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import redis
from rq import Worker
from rq.job import Job

from producer import enqueue
from rankstream import keys
from rankstream.dev.example import example_request
from rankstream.dev.processes import rankstream, stop, wait_for
from rankstream.dev.redis_server import RedisServer, free_port
from rankstream.queue import ranking_queue
from rankstream.settings import Settings

WORKERS = 4
FAULTS = ("disconnect", "rate_limit", "server_error", "stall", "slow_first_token", "garbage", "truncate")
WORKER_ENV = {
    "RANKSTREAM_CONCURRENCY": "50",
    "RANKSTREAM_LEASE_SECONDS": "6",
    "RANKSTREAM_IDLE_TIMEOUT": "2",
    "RANKSTREAM_FIRST_TOKEN_TIMEOUT": "3",
    "RANKSTREAM_MAX_ATTEMPTS": "3",
    "RANKSTREAM_METRICS_PORT": "0",
    "RANKSTREAM_LOG_LEVEL": "WARNING",
}
KILL_TAIL = 8.0  # seconds after the last enqueue during which kills go on


@dataclass
class Kill:
    at: float  # time.time() of the SIGKILL
    pid: int
    name: str
    jobs: list[str]


@dataclass
class WorkerProc:
    popen: subprocess.Popen[bytes]
    name: str
    log: IO[bytes]


@dataclass
class Faults:
    served: int = 0
    injected: collections.Counter[str] = field(default_factory=collections.Counter)
    seen_faulty: int = 0
    errors: int = 0


class Soak:
    def __init__(self, args: argparse.Namespace, redis_url: str, logdir: Path) -> None:
        self.args = args
        self.redis_url = redis_url
        self.logdir = logdir
        self.settings = Settings.model_validate(
            {"redis_url": redis_url, "queue": f"soak-{uuid.uuid4().hex[:8]}"}
        )
        self.connection = redis.Redis.from_url(redis_url)
        self.queue = ranking_queue(self.connection, self.settings)
        self.sim_port = free_port()
        self.sim_url = f"http://127.0.0.1:{self.sim_port}"
        self.sim: subprocess.Popen[bytes] | None = None
        self.workers: list[WorkerProc] = []
        self.kills: list[Kill] = []
        self.job_ids: list[str] = []
        self.faults = Faults()
        self.stopping = threading.Event()
        self.rng = random.Random(args.seed)
        self.spawned = 0
        self.lock = threading.Lock()
        self.procs: list[subprocess.Popen[bytes]] = []  # every worker started, to stop at the end
        self.logs: list[IO[bytes]] = []
        self.replacements: list[threading.Thread] = []

    # -- processes -------------------------------------------------------------------------

    def start_simulator(self) -> None:
        log = open(self.logdir / "llm-sim.log", "wb")  # noqa: SIM115 - closed with the directory
        args = ["llm-sim", "--port", str(self.sim_port), "--ttft", "0.3", "--tokens-per-second", "60"]
        self.sim = rankstream(args, dict(os.environ), stdout=subprocess.DEVNULL, stderr=log)
        sim = self.sim

        def up() -> bool:
            if sim.poll() is not None:
                raise RuntimeError(f"the simulator exited with status {sim.returncode}")
            try:
                return httpx.get(f"{self.sim_url}/v1/models", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 20, "the simulator")

    def start_worker(self) -> WorkerProc:
        with self.lock:
            self.spawned += 1
            path = self.logdir / f"worker-{self.spawned}.log"
            log = open(path, "wb")  # noqa: SIM115
            self.logs.append(log)
        env = {
            **os.environ,
            **WORKER_ENV,
            "OPENAI_BASE_URL": f"{self.sim_url}/v1",
            "REDIS_URL": self.redis_url,
            "RANKSTREAM_QUEUE": self.settings.queue,
        }
        env.pop("OPENAI_API_KEY", None)
        popen = rankstream(["worker"], env, stdout=subprocess.DEVNULL, stderr=log)
        with self.lock:
            self.procs.append(popen)

        def registered() -> str | None:
            if popen.poll() is not None:
                log.flush()
                tail = path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"a worker exited with status {popen.returncode}: {tail}")
            for worker in Worker.all(queue=self.queue):
                if worker.pid == popen.pid:
                    return worker.name
            return None

        name = str(wait_for(registered, 30, "a worker to register"))
        proc = WorkerProc(popen, name, log)
        with self.lock:
            self.workers.append(proc)
        return proc

    def replace_in_background(self, kill: Kill) -> None:
        """Start a replacement without holding up the enqueueing; say when it has registered."""

        def replace() -> None:
            self.start_worker()
            print(
                f"    replacement for pid {kill.pid} registered {time.time() - kill.at:.1f}s after the kill",
                flush=True,
            )

        thread = threading.Thread(target=replace, daemon=True)
        thread.start()
        self.replacements.append(thread)

    def kill_one(self) -> Kill | None:
        with self.lock:
            if not self.workers:
                return None
            victim = self.rng.choice(self.workers)
            self.workers.remove(victim)
        victim.popen.send_signal(signal.SIGKILL)
        at = time.time()
        victim.popen.wait()
        kill = Kill(at, victim.popen.pid, victim.name, self.running_on(victim.name))
        self.kills.append(kill)
        return kill

    def running_on(self, name: str) -> list[str]:
        """Our jobs RQ saw started by worker `name` (a dead worker leaves its jobs' hashes as they were)."""
        with self.connection.pipeline(transaction=False) as pipe:
            ids = list(self.job_ids)
            for job_id in ids:
                pipe.hmget(Job.key_for(job_id), "status", "worker_name")
            replies: list[Any] = pipe.execute()
        return [
            job_id
            for job_id, (status, worker) in zip(ids, replies, strict=True)
            if status == b"started" and worker is not None and worker.decode() == name
        ]

    # -- faults ----------------------------------------------------------------------------

    def fault_loop(self, deadline: float) -> None:
        """Keep the faults at about `fault_share` of the requests served, one request at a time."""
        seen: set[str] = set()
        client = httpx.Client(base_url=self.sim_url, timeout=5)
        last_log = 0.0
        try:
            while not self.stopping.is_set() and time.monotonic() < deadline:
                try:
                    if time.monotonic() - last_log >= 0.5:
                        last_log = time.monotonic()
                        for record in client.get("/sim/requests").json():
                            if record["id"] not in seen:
                                seen.add(record["id"])
                                self.faults.served += 1
                                self.faults.seen_faulty += record["fault"] != "none"
                    pending = client.get("/sim/faults").json()["count"] is not None
                    wanted = self.args.fault_share * (self.faults.served + 1)
                    if not pending and sum(self.faults.injected.values()) < wanted:
                        fault = self.rng.choice(FAULTS)
                        client.post("/sim/faults", json={"fault": fault, "count": 1}).raise_for_status()
                        self.faults.injected[fault] += 1
                except (httpx.HTTPError, ValueError, KeyError):
                    self.faults.errors += 1
                self.stopping.wait(0.02)
        finally:
            client.close()

    # -- load ------------------------------------------------------------------------------

    def run_load(self, deadline: float) -> None:
        request = example_request()
        start = time.monotonic()
        next_kill = start + self.args.kill_every
        last_enqueue: float | None = None
        n = 0
        while time.monotonic() < deadline:
            now = time.monotonic()
            if n < self.args.jobs and now >= start + n / self.args.rate:
                self.job_ids.append(
                    enqueue(request, connection=self.connection, settings=self.settings).job_id
                )
                n += 1
                if n == self.args.jobs:
                    last_enqueue = now
                continue
            if last_enqueue is not None and now > last_enqueue + KILL_TAIL:
                return
            if self.args.kill_every > 0 and now >= next_kill:
                next_kill = now + self.args.kill_every
                kill = self.kill_one()
                if kill is not None:
                    self.replace_in_background(kill)
                    print(
                        f"  t={now - start:5.1f}s SIGKILLed worker pid {kill.pid} ({len(kill.jobs)} jobs running on it)",
                        flush=True,
                    )
                continue
            time.sleep(min(0.005, max(0.0, start + n / self.args.rate - now)) if n < self.args.jobs else 0.05)

    def wait_for_terminals(self, deadline: float) -> dict[str, float]:
        """job_id -> time of its (first) terminal event, for the jobs that have one by the deadline."""
        ended: dict[str, float] = {}
        while True:
            pending = [j for j in self.job_ids if j not in ended]
            with self.connection.pipeline(transaction=False) as pipe:
                for job_id in pending:
                    pipe.xrevrange(keys.events(job_id), count=1)
                replies: list[Any] = pipe.execute()
            for job_id, entries in zip(pending, replies, strict=True):
                if entries and entries[0][1].get(b"type") in (b"done", b"error"):
                    ended[job_id] = entry_time(entries[0][0])
            if len(ended) == len(self.job_ids) or time.monotonic() >= deadline:
                return ended
            time.sleep(0.5)

    def read_streams(self) -> dict[str, list[tuple[str, str, dict[str, Any]]]]:
        streams: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
        for offset in range(0, len(self.job_ids), 200):
            batch = self.job_ids[offset : offset + 200]
            with self.connection.pipeline(transaction=False) as pipe:
                for job_id in batch:
                    pipe.xrange(keys.events(job_id))
                replies: list[Any] = pipe.execute()
            for job_id, entries in zip(batch, replies, strict=True):
                streams[job_id] = [
                    (eid.decode(), f[b"type"].decode(), json.loads(f[b"data"])) for eid, f in entries
                ]
        return streams

    def whereabouts(self, job_id: str) -> str:
        """Where a job that never ended is: its state hash, RQ's view, its lease; for the report."""
        c = self.connection
        raw: dict[Any, Any] = c.hgetall(keys.state(job_id))
        state = {text(k): text(v) for k, v in raw.items()}
        rq_job = c.hmget(Job.key_for(job_id), "status", "worker_name", "enqueued_at", "started_at")
        queued = c.lpos(self.queue.key, job_id)
        intermediate = c.lpos(self.queue.intermediate_queue_key, job_id)
        started = job_id in self.queue.started_job_registry.get_job_ids()
        lease = c.zscore(keys.leases(self.settings.queue), job_id)
        created = keys.job_created_at(job_id)
        kills = [f"{k.pid}@{k.at - created:+.2f}s" for k in self.kills]
        names = {k.name: k.pid for k in self.kills}
        worker = text(rq_job[1]) if rq_job[1] else None
        return (
            f"state={state} rq(status, worker_name, enqueued_at, started_at)={rq_job} "
            f"(worker_name is {'the killed pid ' + str(names[worker]) if worker in names else 'not a killed worker'}) "
            f"queue_pos={queued} intermediate_pos={intermediate} in_started_registry={started} lease={lease} "
            f"kills relative to its creation: {kills}"
        )

    def shutdown(self) -> None:
        self.stopping.set()
        for thread in self.replacements:
            thread.join(timeout=35)
        with self.lock:
            procs, logs = list(self.procs), list(self.logs)
        for popen in procs:
            if popen.poll() is None:
                popen.terminate()
        for popen in procs:
            stop(popen, grace=15)
        for log in logs:
            log.close()
        if self.sim is not None:
            stop(self.sim)
        self.connection.close()


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def entry_time(entry_id: bytes | str) -> float:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-")[0]) / 1000


def check(job_id: str, entries: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    problems: list[str] = []
    types = [t for _, t, _ in entries]
    terminals = [i for i, t in enumerate(types) if t in ("done", "error")]
    if len(terminals) != 1:
        problems.append(f"{len(terminals)} terminal events")
    elif terminals[0] != len(types) - 1:
        problems.append(f"{len(types) - 1 - terminals[0]} entries after the terminal event")
    unknown = sorted({t for t in types if t not in ("started", "item", "done", "error")})
    if unknown:
        problems.append(f"unknown event types {unknown}")
    items = [d for _, t, d in entries if t == "item"]
    ids = [str(d.get("product_id")) for d in items]
    twice = sorted({p for p in ids if ids.count(p) > 1})
    if twice:
        problems.append(f"product_id(s) {twice} published twice")
    ranks = [d.get("rank") for d in items]
    if ranks != list(range(1, len(items) + 1)):
        problems.append(f"ranks {ranks}, not 1..{len(items)}")
    return problems


def describe(entries: list[tuple[str, str, dict[str, Any]]]) -> str:
    parts = []
    for _, t, d in entries:
        if t == "started":
            parts.append(f"started(attempt={d.get('attempt')})")
        elif t == "item":
            parts.append(f"item({d.get('rank')}:{d.get('product_id')})")
        elif t == "error":
            parts.append(f"error({d.get('code')},attempt={d.get('attempt')})")
        else:
            parts.append(t)
    return " ".join(parts)


def report(soak: Soak, ended: dict[str, float], elapsed: float) -> int:
    streams = soak.read_streams()
    outcomes: collections.Counter[str] = collections.Counter()
    violations: list[tuple[str, list[str]]] = []
    multi_started = 0
    for job_id in soak.job_ids:
        entries = streams.get(job_id, [])
        if job_id not in ended:
            outcomes["never ended"] += 1
            continue
        terminal = next(d | {"type": t} for _, t, d in reversed(entries) if t in ("done", "error"))
        outcomes["done" if terminal["type"] == "done" else f"error {terminal.get('code')}"] += 1
        multi_started += sum(t == "started" for _, t, _ in entries) > 1
        problems = check(job_id, entries)
        if problems:
            violations.append((job_id, problems))

    killed_jobs = {j for k in soak.kills for j in k.jobs}
    resumed: set[str] = set()
    longest = (0.0, "", 0)
    for kill in soak.kills:
        for job_id in kill.jobs:
            later = [entry_time(e) for e, t, _ in streams.get(job_id, []) if t == "started"]
            if any(at > kill.at for at in later):
                resumed.add(job_id)
            if job_id in ended and ended[job_id] - kill.at > longest[0]:
                longest = (ended[job_id] - kill.at, job_id, kill.pid)
    unended_killed = sorted(killed_jobs - set(ended))

    print()
    print(
        f"soak: {len(soak.job_ids)} jobs, {WORKERS} workers x 50 slots, {len(soak.kills)} SIGKILLs, {elapsed:.1f}s"
    )
    served, injected = soak.faults.served, sum(soak.faults.injected.values())
    share = soak.faults.seen_faulty / served if served else 0.0
    print(
        f"  LLM requests served: {served}; faulty: {soak.faults.seen_faulty} ({share:.0%}); "
        f"injected: {injected} {dict(sorted(soak.faults.injected.items()))}"
        + (f"; fault-switch errors: {soak.faults.errors}" if soak.faults.errors else "")
    )
    print(f"  jobs checked:            {len(soak.job_ids) - outcomes['never ended']}")
    print(f"  done:                    {outcomes['done']}")
    print(f"  worker_lost:             {outcomes['error worker_lost']}")
    others = {k[6:]: v for k, v in outcomes.items() if k.startswith("error ") and k != "error worker_lost"}
    print(f"  other errors by code:    {dict(sorted(others.items())) or 'none'}")
    print(f"  never ended:             {outcomes['never ended']}")
    print(f"  more than one `started`: {multi_started}")
    print(
        f"  running on a killed worker: {len(killed_jobs)}; resumed after the kill: {len(resumed)}; "
        f"without a terminal event: {len(unended_killed)}"
    )
    if longest[1]:
        print(
            f"  longest kill -> terminal event of a job on the killed worker: {longest[0]:.2f}s "
            f"(job {longest[1]}, worker pid {longest[2]})"
        )
    print(f"  violations:              {len(violations)}")
    for job_id, problems in violations[:5]:
        print(f"    {job_id}: {'; '.join(problems)}")
        print(f"      events: {describe(streams.get(job_id, []))}")
    for job_id in [j for j in soak.job_ids if j not in ended][:5]:
        print(f"    never ended {job_id}: events: {describe(streams.get(job_id, [])) or '(none)'}")
        print(f"      {soak.whereabouts(job_id)}")
    return 1 if violations or outcomes["never ended"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs to enqueue (default 1000)")
    parser.add_argument("--rate", type=float, default=50.0, help="jobs enqueued per second (default 50)")
    parser.add_argument(
        "--seconds", type=float, default=300.0, help="the whole run's bound, waiting included (default 300)"
    )
    parser.add_argument("--kill-every", type=float, default=4.0, help="seconds between SIGKILLs (0: none)")
    parser.add_argument(
        "--fault-share", type=float, default=0.2, help="share of faulty LLM calls (default 0.2)"
    )
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.rate <= 0 or args.seconds <= 0 or not 0 <= args.fault_share < 1:
        parser.error("--jobs, --rate and --seconds must be positive, --fault-share in [0, 1)")

    began = time.monotonic()
    deadline = began + args.seconds
    with tempfile.TemporaryDirectory(prefix="rankstream-soak-") as logdir, RedisServer() as server:
        soak = Soak(args, server.url, Path(logdir))
        try:
            soak.start_simulator()
            for _ in range(WORKERS):
                soak.start_worker()
            print(
                f"soak: {args.jobs} jobs at {args.rate:g}/s, a SIGKILL every {args.kill_every:g}s, "
                f"~{args.fault_share:.0%} faulty LLM calls, bound {args.seconds:g}s",
                flush=True,
            )
            faults = threading.Thread(target=soak.fault_loop, args=(deadline,), daemon=True)
            faults.start()
            soak.run_load(deadline)
            ended = soak.wait_for_terminals(deadline)
            soak.stopping.set()
            faults.join(timeout=10)
            return report(soak, ended, time.monotonic() - began)
        finally:
            soak.shutdown()


if __name__ == "__main__":
    sys.exit(main())
