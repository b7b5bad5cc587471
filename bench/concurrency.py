"""Section 7: many rankings at once in one `rankstream worker`, against RQ's one job per process.

The LLM simulator runs at a realistic pace (`rankstream llm-sim --ttft 0.3 --tokens-per-second
60`, its own process) and every job is the example ranking (`rankstream.dev.example`). First one
job alone, one after another on an idle worker: its duration sets the arrival rate that keeps
LIVE streams live (rate = LIVE / duration), and its first item is the single-stream baseline.
Then two loads:

- steady: jobs enqueued one by one at that rate (at least 2 x LIVE of them);
- burst: LIVE jobs enqueued at once.

Two setups, each on a queue of its own:

- rankstream: ONE `rankstream worker --concurrency 200` process (RANKSTREAM_CONCURRENCY=200);
- the stock RQ way: `rq worker-pool -n POOL -w rq.SimpleWorker -j worker.guard.GuardedJob -S json`,
  POOL processes each running the same job function (`worker.job.rank`, which builds its own
  runtime from the environment) one job at a time.

Measured per load, from the worker processes' /proc (the pool: the pool process and its
children) and the jobs' state hashes (`enqueued_at`, `started_at`, `first_item_at`,
`finished_at`: one clock, time.time(), written by the producer and the job's Lua steps):

- peak resident memory: the sum of VmHWM (reset before each load by /proc/PID/clear_refs), and
  per live stream: (peak - one idle warmed worker process's VmRSS) / most streams live at once;
- most streams live at once: started (START) but not ended (terminal event), from the hashes;
- time to first item, enqueue -> first item on the stream, p50/p99 over the load's jobs;
- wall time: first enqueue -> last terminal event;
- worker CPU per job: utime+stime of the worker processes, from just before the first enqueue
  until RQ has recorded every job's end (finished or failed registry), over the jobs.

The rankstream worker is a fresh process for each load (its idle memory is then its own); the
pool serves both loads (each of its processes holds one job at a time, so its memory is flat).
If py-spy is installed (the bench extras in pyproject.toml bring it), the steady load
runs once more on a fresh rankstream worker with `py-spy record --pid --gil --nonblocking`
attached for the load alone, and the samples are summarised by where the worker's CPU goes
(category, thread, function). The machine's busy cores over each load (/proc/stat) are printed
beside the worker's, the simulator's, Redis's and this process's CPU: what else ran.

`python -m bench --only 7 [--quick]` runs it in the table; `python -m bench.concurrency` alone
also takes `--live N` (another load), `--no-pool`, `--no-profile`, `--profile-out FILE`.
"""

from __future__ import annotations

import collections
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from rq import Queue, Worker

from producer import enqueue, events
from rankstream import keys
from rankstream.dev.example import example_request
from rankstream.dev.processes import stop, wait_for, wait_for_worker
from rankstream.dev.redis_server import free_port
from rankstream.queue import ranking_queue
from rankstream.settings import Settings

from .common import Row, child, median, percentile

TTFT = 0.3  # seconds to the first token
TOKENS_PER_SECOND = 60.0
LIVE = 200  # streams the load keeps live
CONCURRENCY = 200  # the rankstream worker's --concurrency
WARM = 2  # jobs that warm a fresh worker (imports, connections, scripts) before anything counts
PROFILE_HZ = 500
SAMPLE_SECONDS = 0.05
IDLE_SECONDS = 3.0  # how long the idle CPU of each setup is measured  # how often the sampler reads VmRSS and RQ's started registry
TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Plan:
    live: int  # streams the steady load keeps live, and the burst's size
    single: int  # single-stream jobs on an idle worker (after WARM)
    steady: int  # jobs at the steady rate
    pool: int  # processes of the stock RQ pool


def make_plan(quick: bool, live: int = LIVE) -> Plan:
    """At least 2 x live jobs at the steady rate (5 x in a full run, so most of it is steady state).

    The pool: 50 processes, a quarter of the load, because each holds ~95 MB once it has run a
    job and costs ~0.8 s of CPU to warm (its imports and runtime): 200 would take ~19 GB of this
    shared 24 GiB machine and over a minute of both cores to start. 20 for --quick."""
    if quick:
        return Plan(live=live, single=4, steady=2 * live, pool=20)
    return Plan(live=live, single=8, steady=5 * live, pool=50)


# --- processes -------------------------------------------------------------------------------


def _status_kb(pid: int, *fields: str) -> dict[str, int]:
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name in fields:
                    found[name] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


def _cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), not its children."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of proc(5)


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rpartition(")")[2].split()[1])
            except (FileNotFoundError, ProcessLookupError, ValueError):
                continue
            if ppid == pid:
                kids.append(int(entry))
    return sorted(kids)


def _reset_peak(pid: int) -> None:
    """Reset VmHWM to the current VmRSS (clear_refs 5, Linux 4.0+)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


@dataclass
class Workers:
    """The processes of one setup: their pids, summed."""

    name: str
    pids: list[int]  # every process of the setup
    job_pids: list[int]  # those that run jobs

    def rss_mb(self) -> float:
        return sum(_status_kb(pid, "VmRSS").get("VmRSS", 0) for pid in self.pids) / 1024

    def hwm_mb(self) -> float:
        return sum(_status_kb(pid, "VmHWM").get("VmHWM", 0) for pid in self.pids) / 1024

    def cpu(self) -> float:
        return sum(_cpu_seconds(pid) for pid in self.pids)


def _machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / TICK  # guest time is already in user


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _redis_pid(connection: redis.Redis) -> int:
    return int(connection.info("server")["process_id"])


@contextmanager
def paced_simulator(tries: int = 3) -> Iterator[tuple[str, int]]:
    """`rankstream llm-sim` at the section's pace, in a process of its own: (base URL, pid).

    Another free port if the one picked was taken before the simulator bound it."""
    for attempt in range(1, tries + 1):
        port = free_port()
        args = [
            "llm-sim",
            "--port",
            str(port),
            "--ttft",
            str(TTFT),
            "--tokens-per-second",
            str(TOKENS_PER_SECOND),
        ]
        with child(args) as process:
            url = f"http://127.0.0.1:{port}"

            def up(process: Any = process, url: str = url) -> bool:
                if process.popen.poll() is not None:
                    raise process.died()
                try:
                    return httpx.get(f"{url}/v1/models", timeout=1).status_code == 200
                except httpx.TransportError:
                    return False

            try:
                wait_for(up, 20, "the simulator")
            except RuntimeError as exc:
                if "address already in use" in str(exc) and attempt < tries:
                    continue
                raise
            yield f"{url}/v1", process.popen.pid
            return


def _settings(redis_url: str, name: str) -> Settings:
    return Settings.model_validate({"redis_url": redis_url, "queue": f"bench-{name}-{uuid.uuid4().hex[:8]}"})


def _env(redis_url: str, llm_url: str, settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "OPENAI_BASE_URL": llm_url,
        "RANKSTREAM_QUEUE": settings.queue,
        "RANKSTREAM_CONCURRENCY": str(CONCURRENCY),
        "RANKSTREAM_LOG_LEVEL": "WARNING",
    }


def _rankstream_command() -> list[str]:
    return [
        sys.executable,
        "-m",
        "rankstream",
        "worker",
        "--concurrency",
        str(CONCURRENCY),
        "--metrics-port",
        "0",
    ]


def _pool_command(settings: Settings, redis_url: str, processes: int) -> list[str]:
    rq = str(Path(sys.executable).parent / "rq")
    return [
        *(rq, "worker-pool", settings.queue, "-n", str(processes), "-u", redis_url, "-l", "WARNING"),
        *("-w", "rq.SimpleWorker", "-j", "worker.guard.GuardedJob", "-S", "json"),
    ]


@contextmanager
def _process(command: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    with tempfile.TemporaryFile() as log:
        popen = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            yield popen
        except BaseException:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-2000:]
            if tail.strip():
                print(f"# {command[0]} ... stderr:\n{tail}", file=sys.stderr)
            raise
        finally:
            stop(popen)


@contextmanager
def rankstream_worker(
    redis_url: str, llm_url: str, env: dict[str, str] | None = None
) -> Iterator[tuple[Settings, Workers]]:
    settings = _settings(redis_url, "concurrent")
    with _process(_rankstream_command(), {**_env(redis_url, llm_url, settings), **(env or {})}) as popen:
        wait_for_worker(settings, popen)
        yield settings, Workers("rankstream", [popen.pid], [popen.pid])


@contextmanager
def py_spy(pid: int, output: str) -> Iterator[None]:
    """`py-spy record --pid PID` (GIL holder only, not pausing the process) while inside; SIGINT ends
    the recording and py-spy writes `output` (raw collapsed stacks)."""
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [binary, "record", "--pid", str(pid), "--format", "raw", "--rate", str(PROFILE_HZ)]
    command += ["--gil", "--nonblocking", "--threads", "-o", output]
    with tempfile.TemporaryFile() as log:
        spy = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:

            def sampling() -> bool:
                if spy.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"py-spy exited: {log.read().decode(errors='replace')[-1000:]}")
                log.seek(0)
                return b"Sampling" in log.read()

            wait_for(sampling, 30, "py-spy to attach")
            yield
        finally:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()


def py_spy_installed() -> bool:
    return bool(shutil.which("py-spy")) or (Path(sys.executable).parent / "py-spy").exists()


@contextmanager
def rq_pool(redis_url: str, llm_url: str, processes: int) -> Iterator[tuple[Settings, Workers]]:
    settings = _settings(redis_url, "pool")
    with _process(_pool_command(settings, redis_url, processes), _env(redis_url, llm_url, settings)) as popen:
        connection = redis.Redis.from_url(redis_url)
        queue = ranking_queue(connection, settings)

        def all_up() -> bool:
            if popen.poll() is not None:
                raise RuntimeError(f"rq worker-pool exited with status {popen.returncode}")
            return Worker.count(queue=queue) >= processes

        wait_for(all_up, 60, f"{processes} pool workers to register")

        def forked() -> list[int]:
            kids = _children(popen.pid)
            return kids if len(kids) >= processes else []

        kids = wait_for(forked, 30, "the pool's processes")
        connection.close()
        yield settings, Workers(f"rq worker-pool -n {processes}", [popen.pid, *kids], kids)


# --- jobs --------------------------------------------------------------------------------------


@dataclass
class Jobs:
    """A queue's jobs and RQ's record of their ends."""

    connection: redis.Redis
    settings: Settings
    queue: Queue = field(init=False)

    def __post_init__(self) -> None:
        self.queue = ranking_queue(self.connection, self.settings)
        self.request = example_request()

    def ended_in_rq(self) -> int:
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.zcard(self.queue.finished_job_registry.key)
            pipe.zcard(self.queue.failed_job_registry.key)
            finished, failed = pipe.execute()
        return int(finished) + int(failed)

    def running_in_rq(self) -> int:
        return int(self.connection.zcard(self.queue.started_job_registry.key))

    def enqueue(self) -> str:
        return enqueue(self.request, settings=self.settings, connection=self.connection).job_id

    def one_at_a_time(self, count: int) -> list[str]:
        """`count` jobs, each enqueued once the previous one has ended and RQ has recorded it."""
        job_ids = []
        for _ in range(count):
            before = self.ended_in_rq()
            job_id = self.enqueue()
            for _ in events(job_id, settings=self.settings, connection=self.connection, timeout=60):
                pass
            wait_for(lambda n=before: self.ended_in_rq() > n, 30, "RQ to record the job's end")
            job_ids.append(job_id)
        return job_ids

    def states(self, job_ids: Sequence[str]) -> list[dict[str, str]]:
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(keys.state(job_id))
            replies = pipe.execute()
        return [{k.decode(): v.decode() for k, v in reply.items()} for reply in replies]


def _moments(states: list[dict[str, str]], name: str) -> list[float]:
    return [float(s[name]) - float(s["enqueued_at"]) for s in states if name in s]


def _most_live(states: list[dict[str, str]]) -> int:
    """The most jobs between their START and their terminal event at any one moment."""
    marks = [(float(s["started_at"]), 1) for s in states if "started_at" in s]
    marks += [(float(s["finished_at"]), -1) for s in states if "finished_at" in s]
    live = most = 0
    for _, step in sorted(marks, key=lambda mark: (mark[0], mark[1])):  # an end before a start at a tie
        live += step
        most = max(most, live)
    return most


@dataclass
class Single:
    first_item: list[float]  # seconds, enqueue -> first item
    duration: list[float]  # seconds, enqueue -> terminal event
    cpu_ms_per_job: float  # the worker processes' CPU (the pool's idle ones too), per job


def single_stream(jobs: Jobs, workers: Workers, count: int, warm: bool = True) -> Single:
    """`count` jobs one at a time on an idle worker (after WARM more, unless already warm)."""
    if warm:
        jobs.one_at_a_time(WARM)
    before = workers.cpu()
    states = jobs.states(jobs.one_at_a_time(count))
    cpu = workers.cpu() - before
    return Single(_moments(states, "first_item_at"), _moments(states, "finished_at"), cpu / count * 1e3)


@dataclass
class Load:
    jobs: int
    rate: float  # achieved enqueue rate, jobs per second (inf for a burst)
    idle_mb: float  # VmRSS of one idle, warmed worker process
    peak_mb: float  # sum of the processes' VmHWM over the load
    sampled_mb: float  # the most VmRSS summed over the processes at one sample
    most_live: int
    most_running_in_rq: int  # RQ's StartedJobRegistry, sampled
    first_item: list[float]
    wall: float
    cpu: float  # seconds, the worker processes
    busiest: float  # the worker processes' CPU over the busiest second, in cores
    machine: float  # the whole machine's busy cores, on average over the load
    others_cpu: dict[str, float]  # seconds, the simulator and Redis over the same span
    errors: collections.Counter[str]  # the jobs that did not end `done`, by status and message

    @property
    def not_done(self) -> int:
        return sum(self.errors.values())

    @property
    def per_stream_mb(self) -> float:
        return (self.peak_mb - self.idle_mb) / max(1, self.most_live)

    @property
    def cpu_ms_per_job(self) -> float:
        return self.cpu / self.jobs * 1e3


def run_load(
    jobs: Jobs, workers: Workers, idle_mb: float, gaps: Sequence[float], others: dict[str, int]
) -> Load:
    """Enqueue len(gaps) jobs, job n at gaps[n] seconds after the first; wait until RQ recorded every end."""
    for pid in workers.pids:
        _reset_peak(pid)
    samples: list[tuple[float, float, int, float]] = []  # (monotonic, RSS MB, RQ started, CPU s)
    stopping = threading.Event()

    def sample() -> None:
        while not stopping.wait(SAMPLE_SECONDS):
            samples.append((time.monotonic(), workers.rss_mb(), jobs.running_in_rq(), workers.cpu()))

    ended_before = jobs.ended_in_rq()
    others_before = {name: _cpu_seconds(pid) for name, pid in others.items()}
    machine_before, own_before, wall_before = _machine_busy(), _own_cpu(), time.monotonic()
    cpu_before = workers.cpu()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    job_ids = []
    start = time.monotonic()
    for gap in gaps:
        delay = start + gap - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        job_ids.append(jobs.enqueue())
    enqueued_in = time.monotonic() - start
    deadline = 60 + 0.2 * len(gaps)  # at least 5 jobs a second
    try:
        wait_for(
            lambda: jobs.ended_in_rq() - ended_before >= len(job_ids), deadline, "RQ to record every end"
        )
    finally:
        stopping.set()
        sampler.join()
    cpu = workers.cpu() - cpu_before
    others_cpu = {name: _cpu_seconds(pid) - others_before[name] for name, pid in others.items()}
    others_cpu["this bench process"] = _own_cpu() - own_before
    span = time.monotonic() - wall_before
    machine = (_machine_busy() - machine_before) / span
    others_cpu["everything else"] = machine * span - cpu - sum(others_cpu.values())
    states = jobs.states(job_ids)
    enqueued = [float(s["enqueued_at"]) for s in states]
    finished = [float(s["finished_at"]) for s in states if "finished_at" in s]
    return Load(
        jobs=len(job_ids),
        rate=(len(job_ids) - 1) / enqueued_in if gaps[-1] > 0 else float("inf"),
        idle_mb=idle_mb,
        peak_mb=workers.hwm_mb(),
        sampled_mb=max((sample[1] for sample in samples), default=0.0),
        most_live=_most_live(states),
        most_running_in_rq=max((sample[2] for sample in samples), default=0),
        first_item=_moments(states, "first_item_at"),
        wall=max(finished) - min(enqueued),
        cpu=cpu,
        busiest=_busiest(samples),
        machine=machine,
        others_cpu=others_cpu,
        errors=_errors(jobs, job_ids, states),
    )


def _busiest(samples: list[tuple[float, float, int, float]], window: float = 1.0) -> float:
    """The most CPU (in cores) the processes used over any `window` seconds between samples."""
    busiest, j = 0.0, 0
    for i, (t, _, _, cpu) in enumerate(samples):
        j = max(j, i)
        while j < len(samples) and samples[j][0] - t < window:
            j += 1
        if j == len(samples):
            break
        busiest = max(busiest, (samples[j][3] - cpu) / (samples[j][0] - t))
    return busiest


def _errors(jobs: Jobs, job_ids: list[str], states: list[dict[str, str]]) -> collections.Counter[str]:
    """What the jobs that did not end `done` said in their terminal event (its message, shortened)."""
    errors: collections.Counter[str] = collections.Counter()
    for job_id, state in zip(job_ids, states, strict=True):
        if state.get("status") == "done":
            continue
        last: Any = jobs.connection.xrevrange(keys.events(job_id), count=1)
        data = last[0][1].get(b"data", b"").decode(errors="replace") if last else "no terminal event"
        message = data.split('"message":"', 1)[-1].split('"', 1)[0]
        errors[f"{state.get('status', '?')}: {message.rpartition(': ')[2][:60]}"] += 1
    return errors


def steady_gaps(jobs: int, rate: float) -> list[float]:
    return [n / rate for n in range(jobs)]


def burst_gaps(jobs: int) -> list[float]:
    return [0.0] * jobs


# --- the setups ----------------------------------------------------------------------------------


@dataclass
class Setup:
    name: str
    single: Single
    steady: Load
    burst: Load
    processes: int
    idle_cpu: float  # the worker processes' CPU while idle, in cores (RQ's polls, heartbeats)


def _idle_cpu(workers: Workers) -> float:
    """The processes' CPU over IDLE_SECONDS with no job, in cores."""
    before, start = workers.cpu(), time.monotonic()
    time.sleep(IDLE_SECONDS)
    return (workers.cpu() - before) / (time.monotonic() - start)


def _idle_one(workers: Workers) -> float:
    """VmRSS of one idle, warmed worker process (the pool: the median of its workers)."""
    return median([_status_kb(pid, "VmRSS")["VmRSS"] / 1024 for pid in workers.job_pids])


def measure_rankstream(
    connection: redis.Redis,
    redis_url: str,
    llm_url: str,
    plan: Plan,
    others: dict[str, int],
    env: dict[str, str] | None = None,
    name: str = "rankstream",
) -> tuple[Setup, float]:
    """Single stream and the steady load on one fresh worker, the burst on another; and the rate."""
    with rankstream_worker(redis_url, llm_url, env) as (settings, workers):
        jobs = Jobs(connection, settings)
        single = single_stream(jobs, workers, plan.single)
        rate = plan.live / median(single.duration)
        idle_cpu = _idle_cpu(workers)
        steady = run_load(jobs, workers, _idle_one(workers), steady_gaps(plan.steady, rate), others)
    with rankstream_worker(redis_url, llm_url, env) as (settings, workers):
        jobs = Jobs(connection, settings)
        jobs.one_at_a_time(WARM)
        burst = run_load(jobs, workers, _idle_one(workers), burst_gaps(plan.live), others)
    return Setup(name, single, steady, burst, 1, idle_cpu), rate


def measure_pool(
    connection: redis.Redis, redis_url: str, llm_url: str, plan: Plan, rate: float, others: dict[str, int]
) -> Setup:
    with rq_pool(redis_url, llm_url, plan.pool) as (settings, workers):
        jobs = Jobs(connection, settings)
        _warm_pool(jobs, plan.pool)
        single = single_stream(jobs, workers, plan.single, warm=False)
        idle = _idle_one(workers)
        idle_cpu = _idle_cpu(workers)
        steady = run_load(jobs, workers, idle, steady_gaps(plan.steady, rate), others)
        burst = run_load(jobs, workers, idle, burst_gaps(plan.live), others)
    return Setup(f"rq worker-pool -n {plan.pool}", single, steady, burst, plan.pool, idle_cpu)


def _warm_pool(jobs: Jobs, processes: int) -> None:
    """Until every process of the pool has run a job (its imports and runtime made): rounds of
    `processes` jobs at once, each process taking one while the others are busy."""
    for _ in range(4):
        cold = [w for w in Worker.all(queue=jobs.queue) if not w.successful_job_count]
        if not cold:
            return
        before = jobs.ended_in_rq()
        for _ in cold:
            jobs.enqueue()
        count = len(cold)
        wait_for(lambda n=before + count: jobs.ended_in_rq() >= n, 120, "the pool to warm")
    raise RuntimeError("the pool's workers did not all take a job")


def profile(
    connection: redis.Redis,
    redis_url: str,
    llm_url: str,
    jobs_count: int,
    rate: float,
    others: dict[str, int],
    keep: str | None = None,
) -> Profile | None:
    """The steady load again, on a fresh rankstream worker with py-spy attached for the load alone."""
    if not py_spy_installed():
        return None
    with (
        tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp,
        rankstream_worker(redis_url, llm_url) as (settings, workers),
    ):
        output = str(Path(tmp) / "worker.txt")
        jobs = Jobs(connection, settings)
        jobs.one_at_a_time(WARM)
        before = _cpu_split(workers.pids[0])
        with py_spy(workers.pids[0], output):
            load = run_load(jobs, workers, _idle_one(workers), steady_gaps(jobs_count, rate), others)
        after = _cpu_split(workers.pids[0])
        stacks: collections.Counter[str] = collections.Counter()
        for line in Path(output).read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks[stack] += int(count)
        if keep:
            shutil.copyfile(output, keep)
    user, system = (after[0] - before[0], after[1] - before[1])
    return Profile(load, stacks, user / load.jobs * 1e3, system / load.jobs * 1e3)


@dataclass
class Profile:
    load: Load
    stacks: collections.Counter[str]
    user_ms_per_job: float
    system_ms_per_job: float


def _cpu_split(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


# --- the profile, summarised -------------------------------------------------------------------

# Where a sample's CPU goes. By thread first: the main thread dequeues and does RQ's bookkeeping
# for each start (and hands the job to the event loop: "job start"), the finisher threads record
# each end in RQ, the heartbeat thread beats. On the event loop's thread, the first category with
# a frame anywhere on the stack (in this order) takes the sample; generic frames (pydantic, re,
# json) go with the code that called them, and a stack of the event loop's own frames alone
# (its select, callbacks, socket transports) is its overhead.
LOOP_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("extractor (worker/extract.py)", ("worker/extract.py",)),
    (
        "publishing: the Lua steps and their Redis client",
        ("worker/publish.py", "worker/redis_link.py", "redis/"),
    ),
    ("LLM request: openai client builds, sends, reads headers", ("openai/",)),
    (
        "LLM stream: the streamed POST, its body and SSE (worker/http_stream.py, http_wire.py, llm.py)",
        (
            *("worker/llm.py", "worker/http_stream.py", "worker/http_wire.py", "worker/network.py"),
            *("worker/transport.py", "httpx", "httpcore", "h11/", "anyio/"),
        ),
    ),
    ("metrics and report", ("worker/metrics.py", "worker/report.py", "prometheus_client/")),
    ("handing each end to the finisher threads", ("worker/rq_worker.py",)),
    ("job logic: ranking, checks, watchdog", ("worker/", "rankstream/")),
    (
        "event loop overhead: select, callbacks, socket transports",
        ("asyncio/", "selectors.py", "contextlib.py"),
    ),
]
START = "job start: validate the request, build the ranking (main thread)"
DEQUEUE = "RQ: dequeue and start bookkeeping (main thread)"
FINISH = "RQ: record each end (finisher threads)"
HEARTBEAT = "RQ: heartbeats (heartbeat thread)"


def _frames(stack: str) -> list[str]:
    return stack.split(";")


def _category(frames: list[str]) -> str:
    """frames[0] names the thread (py-spy --threads), the rest run from the outermost call in."""
    thread, calls = _thread(frames), frames[1:]
    if thread == "MainThread":
        return START if any("worker/job.py" in frame for frame in calls) else DEQUEUE
    if thread == "rankstream-finish":
        return FINISH
    if thread == "rankstream-heartbeat":
        return HEARTBEAT
    for name, needles in LOOP_CATEGORIES:
        if any(needle in frame for frame in calls for needle in needles):
            return name
    return "other"


def _function(frame: str) -> str:
    """`name (path:line)` -> `name (path)`: one entry per function, whatever the line."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rpartition(':')[0]})" if ":" in where else frame


def _thread(frames: list[str]) -> str:
    head = frames[0] if frames else ""
    for name in ("rankstream-io", "rankstream-finish", "rankstream-heartbeat", "MainThread"):
        if name in head:
            return name
    return head.partition(":")[2].strip() or head


# Frames on nearly every stack (threads, the event loop, the job's own coroutine): left out of
# the top cumulative entries, which would otherwise be these.
WRAPPERS = (
    "threading.py",
    "asyncio/base_events.py",
    "asyncio/events.py",
    "runpy",
    "contextlib.py",
    "concurrent/futures/thread.py",
    "rankstream/__main__.py",
    "rankstream/cli/",
    "worker/runner.py",
    "Ranking.run ",
    "Ranking._run ",
    "Ranking._attempt ",
)


def summarise(profiled: Profile, cpu_ms_per_job: float, top: int = 15) -> list[str]:
    """Where the rankstream worker's CPU goes: by category (with each one's top functions by own
    time), by thread, and the top functions by cumulative and by own time.

    ms per job = a share of the samples x `cpu_ms_per_job` (the unprofiled steady run's user+system
    CPU per job): py-spy samples only the thread holding the GIL, so the system time spent outside
    the GIL (in send/recv/epoll) is spread in proportion."""
    stacks = profiled.stacks
    total = sum(stacks.values()) or 1
    by_category: collections.Counter[str] = collections.Counter()
    by_thread: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    own_by_category: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for stack, count in stacks.items():
        frames = _frames(stack)
        category = _category(frames)
        by_category[category] += count
        by_thread[_thread(frames)] += count
        functions = [_function(frame) for frame in frames[1:]]
        for function in set(functions):
            inclusive[function] += count
        if functions:
            own[functions[-1]] += count
            own_by_category[category][functions[-1]] += count

    def ms(count: int) -> str:
        return f"{count / total:6.1%} {count / total * cpu_ms_per_job:5.2f} ms"

    load = profiled.load
    lines = [
        f"# profile: rankstream worker, the steady load again under py-spy ({load.jobs} jobs at "
        f"{load.rate:.0f}/s, {PROFILE_HZ} Hz, the GIL holder only): {total} samples; CPU per job "
        f"{profiled.user_ms_per_job:.2f} ms user + {profiled.system_ms_per_job:.2f} ms system",
        f"#   by category: share of samples, ms per job (of the unprofiled {cpu_ms_per_job:.1f} ms); "
        "then its top functions by own time",
    ]
    for name, count in by_category.most_common():
        lines.append(f"#   {ms(count)}  {name}")
        leaders = own_by_category[name].most_common(3)
        lines.append("#                       " + "; ".join(f"{f} {c / total:.1%}" for f, c in leaders))
    lines.append("#   by thread: " + ", ".join(f"{n} {c / total:.0%}" for n, c in by_thread.most_common()))
    lines.append("#   top cumulative (the function on the stack), threads and the job's coroutine left out:")
    leaders = [(f, c) for f, c in inclusive.most_common() if not any(w in f for w in WRAPPERS)][:top]
    lines += [f"#   {ms(c)}  {f}" for f, c in leaders]
    lines.append("#   top own time:")
    lines += [f"#   {ms(c)}  {f}" for f, c in own.most_common(top)]
    return lines


# --- the section ---------------------------------------------------------------------------------


def _ms(values: Sequence[float], q: float) -> float:
    return percentile(values, q) * 1e3


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def measure(
    redis_url: str,
    quick: bool = False,
    *,
    live: int = LIVE,
    pool: bool = True,
    profiling: bool = True,
    profile_out: str | None = None,
) -> list[Row]:
    plan = make_plan(quick, live)
    started = time.monotonic()
    connection = redis.Redis.from_url(redis_url)
    with paced_simulator() as (llm_url, sim_pid), httpx.Client(base_url=llm_url.removesuffix("/v1")) as admin:
        others = {"simulator": sim_pid, "redis": _redis_pid(connection)}
        ours, rate = measure_rankstream(connection, redis_url, llm_url, plan, others)
        admin.delete("/sim/requests")  # the simulator keeps a record per request: keep it short
        # The same worker with the streamed POST on the openai client's own HTTP stack: what the
        # hand-written path (worker/http_stream.py) saves, in the same run.
        sdk_http, _ = measure_rankstream(
            connection, redis_url, llm_url, plan, others, SDK_HTTP, "rankstream, RANKSTREAM_LLM_HTTP=sdk"
        )
        admin.delete("/sim/requests")
        theirs = measure_pool(connection, redis_url, llm_url, plan, rate, others) if pool else None
        admin.delete("/sim/requests")
        profiled = (
            profile(connection, redis_url, llm_url, plan.steady, rate, others, profile_out)
            if profiling
            else None
        )
    connection.close()
    _print_details(plan, ours, theirs, rate, profiled, time.monotonic() - started, sdk_http)
    return _rows(plan, ours, theirs, rate) + _sdk_rows(ours, sdk_http)


SDK_HTTP = {"RANKSTREAM_LLM_HTTP": "sdk"}


def _sdk_rows(ours: Setup, sdk: Setup) -> list[Row]:
    """The hand-written streamed POST against the openai client's HTTP stack, same load, same run."""
    rows = []
    for label, a, b in (("steady", ours.steady, sdk.steady), ("burst", ours.burst, sdk.burst)):
        rows += [
            Row(
                "7 concurrency",
                f"{label}: worker CPU per job (ms), LLM HTTP hand-written vs the openai client's",
                f"{a.cpu_ms_per_job:.1f}",
                f"{b.cpu_ms_per_job:.1f} (RANKSTREAM_LLM_HTTP=sdk)",
                f"{b.cpu_ms_per_job / a.cpu_ms_per_job:.2f}x",
            ),
            Row(
                "",
                f"{label}: first item p99 minus alone p99 (ms), the same two",
                f"{_ms(a.first_item, 99) - _ms(ours.single.first_item, 99):+.0f}",
                f"{_ms(b.first_item, 99) - _ms(sdk.single.first_item, 99):+.0f} (RANKSTREAM_LLM_HTTP=sdk)",
            ),
        ]
    return rows


def _print_details(
    plan: Plan,
    ours: Setup,
    theirs: Setup | None,
    rate: float,
    profiled: Profile | None,
    seconds: float,
    sdk_http: Setup | None = None,
) -> None:
    print(
        f"# 7 concurrency ({seconds:.0f} s): one job alone takes {median(ours.single.duration):.3f} s, "
        f"so {rate:.1f} jobs/s keep {plan.live} streams live"
    )
    for setup in (ours, sdk_http, theirs):
        if setup is not None:
            print(
                f"#   {setup.name}: idle, {setup.idle_cpu * 1e3:.0f} ms of CPU a second; one job alone, "
                f"first item p50 {_ms(setup.single.first_item, 50):.0f} ms, "
                f"max {max(setup.single.first_item) * 1e3:.0f} ms over {len(setup.single.first_item)} jobs, "
                f"worker CPU {setup.single.cpu_ms_per_job:.1f} ms per job"
            )
    loads = [(ours.name, "steady", ours.steady), (ours.name, "burst", ours.burst)]
    if sdk_http is not None:
        loads += [(sdk_http.name, "steady", sdk_http.steady), (sdk_http.name, "burst", sdk_http.burst)]
    if theirs is not None:
        loads += [(theirs.name, "steady", theirs.steady), (theirs.name, "burst", theirs.burst)]
    if profiled is not None:
        loads.append((ours.name + " under py-spy", "steady", profiled.load))
    for name, label, load in loads:
        others = ", ".join(f"{other} {cpu:.1f} s" for other, cpu in load.others_cpu.items())
        print(
            f"#   {name}, {label}: {load.jobs} jobs at {load.rate:.1f}/s, {load.not_done} not done "
            f"({', '.join(f'{n} {e}' for e, n in load.errors.most_common(3)) or 'no errors'}); "
            f"RSS idle {load.idle_mb:.0f} MB (one process), peak {load.peak_mb:.0f} MB (VmHWM), "
            f"{load.sampled_mb:.0f} MB (sampled); live {load.most_live}, RQ started registry {load.most_running_in_rq}; "
            f"worker CPU {load.cpu:.2f} s over {load.wall:.1f} s, busiest second {load.busiest:.0%} of a core; "
            f"machine {load.machine:.2f} cores busy on average: CPU of {others}"
        )
    if profiled is None:
        print("# 7 concurrency: no profile (py-spy is not installed: `make bench-concurrency` installs it)")
        return
    for line in summarise(profiled, ours.steady.cpu_ms_per_job):
        print(line)


def _rows(plan: Plan, ours: Setup, theirs: Setup | None, rate: float) -> list[Row]:
    base = f" (rq worker-pool -n {plan.pool})"

    def alone(setup: Setup, q: float) -> str:
        return f"{_ms(setup.single.first_item, q):.0f}"

    def other(value: str) -> str:
        return "" if theirs is None else value + base

    rows = [
        Row(
            "7 concurrency",
            "one job alone: first item p50 (ms)",
            alone(ours, 50),
            other(alone(theirs, 50) if theirs else ""),
        ),
        Row(
            "",
            "one job alone: first item p99 (ms)",
            alone(ours, 99),
            other(alone(theirs, 99) if theirs else ""),
        ),
        Row(
            "",
            "one job alone: enqueue -> done p50 (s)",
            f"{median(ours.single.duration):.3f}",
            other(f"{median(theirs.single.duration):.3f}" if theirs else ""),
        ),
    ]
    rows += _load_rows(
        f"steady, {rate:.0f}/s", ours, ours.steady, theirs, theirs.steady if theirs else None, base
    )
    duration = median(ours.single.duration)
    rows.append(
        Row(
            "",
            "  streams one core's CPU carries (job's duration / its CPU)",
            f"{duration / ours.steady.cpu_ms_per_job * 1e3:.0f}",
            other(f"{duration / theirs.steady.cpu_ms_per_job * 1e3:.0f}" if theirs else ""),
        )
    )
    rows += _load_rows("burst", ours, ours.burst, theirs, theirs.burst if theirs else None, base)
    return rows


def _load_rows(
    label: str, ours: Setup, a: Load, theirs: Setup | None, b: Load | None, base: str
) -> list[Row]:
    def over_alone(setup: Setup, load: Load) -> float:
        return _ms(load.first_item, 99) - _ms(setup.single.first_item, 99)

    def cells(value: Callable[[Load], float], form: str, ratio: bool = False) -> tuple[str, str, str]:
        ours_value = value(a)
        if b is None:
            return format(ours_value, form), "", ""
        theirs_value = value(b)
        return (
            format(ours_value, form),
            format(theirs_value, form) + base,
            f"{theirs_value / ours_value:.1f}x" if ratio and ours_value else "",
        )

    over = over_alone(ours, a)
    return [
        Row("7 concurrency", f"{label}: jobs", *cells(lambda x: x.jobs, "d")),
        Row("", f"{label}: most streams live at once", *cells(lambda x: x.most_live, "d")),
        Row(
            "",
            f"{label}: peak RSS, all worker processes (MB)",
            *cells(lambda x: x.peak_mb, ".0f", ratio=True),
        ),
        Row(
            "",
            f"{label}: RSS per live stream (MB)",
            *cells(lambda x: x.per_stream_mb, ".2f")[:2],
            f"target <= 1: {_met(a.per_stream_mb <= 1)}",
        ),
        Row("", f"{label}: first item p50 (ms)", *cells(lambda x: _ms(x.first_item, 50), ".0f")),
        Row("", f"{label}: first item p99 (ms)", *cells(lambda x: _ms(x.first_item, 99), ".0f")),
        Row(
            "",
            f"{label}: first item p99 minus alone p99 (ms)",
            f"{over:+.0f}",
            "" if theirs is None or b is None else f"{over_alone(theirs, b):+.0f}{base}",
            f"target <= 100: {_met(over <= 100)}",
        ),
        Row("", f"{label}: wall time (s)", *cells(lambda x: x.wall, ".1f", ratio=True)),
        Row(
            "",
            f"{label}: worker CPU per job (ms)",
            *cells(lambda x: x.cpu_ms_per_job, ".1f")[:2],
            f"target <= 3: {_met(a.cpu_ms_per_job <= 3)}",
        ),
        Row("", f"{label}: jobs not done", *cells(lambda x: x.not_done, "d")),
    ]


def main() -> None:
    import argparse

    from .common import print_table, redis_server

    parser = argparse.ArgumentParser(prog="python -m bench.concurrency", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer jobs, a smaller pool")
    parser.add_argument(
        "--live", type=int, default=LIVE, help=f"streams the load keeps live (default {LIVE})"
    )
    parser.add_argument("--no-pool", action="store_true", help="only the rankstream worker")
    parser.add_argument("--no-profile", action="store_true", help="no py-spy run")
    parser.add_argument("--profile-out", help="keep py-spy's raw profile in this file")
    args = parser.parse_args()
    with redis_server() as redis_url:
        rows = measure(
            redis_url,
            args.quick,
            live=args.live,
            pool=not args.no_pool,
            profiling=not args.no_profile,
            profile_out=args.profile_out,
        )
    print_table(rows)


if __name__ == "__main__":
    main()
