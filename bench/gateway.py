"""Section 8: one gateway process serving 1, 50 and 500 SSE subscribers, against bare Redis.

Each subscriber follows a job of its own (jobs enqueued on a queue no worker serves, so their
streams stay open). This process then plays the worker: ROUNDS times, every INTERVAL, one
`item` entry is XADDed to every stream (pipelined), its data holding the time it was written.
Two readers receive them, in turn, at the same load:

- through the gateway: N raw SSE connections (asyncio sockets, the `data:` lines picked out of
  the bytes, so the client costs next to nothing);
- bare Redis (the baseline): one client in this process reading the same N streams with one
  blocking XREAD, as the gateway itself does: what delivery costs without the gateway.

Reported: delivery latency (written -> received) p50/p99 for each and the gateway's excess,
and the gateway's resident memory per subscriber ((RSS with N connected - RSS idle) / N).
`python -m bench --only 8`, or `python -m bench.gateway`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import redis
import redis.asyncio

from producer import enqueue
from rankstream import keys
from rankstream.dev.example import example_request
from rankstream.dev.processes import wait_for
from rankstream.dev.redis_server import free_port
from rankstream.settings import Settings

from .common import Row, child, percentile

SUBSCRIBERS = (1, 50, 500)
ROUNDS = 20
INTERVAL = 0.1  # seconds between rounds: at 500 streams, 5,000 entries a second


@contextmanager
def gateway(redis_url: str, queue: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {"REDIS_URL": redis_url, "RANKSTREAM_QUEUE": queue, "RANKSTREAM_LOG_LEVEL": "WARNING"}
    with child(["gateway", "--port", str(port)], env) as process:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if process.popen.poll() is not None:
                raise process.died()
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 30, "the gateway")
        yield url, process.popen.pid


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


async def sse_reader(
    port: int, job_id: str, latencies: list[float], ready: asyncio.Event, expect: int
) -> None:
    """One SSE connection: the latency of each item, from the time in its data."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /v1/rankings/{job_id}/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    pending, seen = b"", 0
    ready.set()
    while seen < expect:
        data = await reader.read(65536)
        if not data:
            break
        now = time.time()
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.startswith(b"data: {"):
                latencies.append(now - json.loads(line[6:])["sent"])
                seen += 1
    writer.close()


async def bare_reader(url: str, streams: list[str], latencies: list[float], expect: int) -> None:
    client = redis.asyncio.Redis.from_url(url)
    positions = {stream: "0-0" for stream in streams}
    seen = 0
    while seen < expect:
        reply: Any = await client.xread(positions, block=2000, count=512)
        now = time.time()
        for name, entries in reply or ():
            for entry_id, fields in entries:
                latencies.append(now - json.loads(fields[b"data"])["sent"])
                positions[name.decode()] = entry_id.decode()
                seen += 1
    await client.aclose()


def publish(connection: redis.Redis, streams: list[str]) -> None:
    for _ in range(ROUNDS):
        started = time.monotonic()
        pipe = connection.pipeline(transaction=False)
        for stream in streams:
            data = json.dumps({"sent": time.time(), "rank": 1, "product_id": "1"})
            pipe.xadd(stream, {"type": "item", "data": data})
        pipe.execute()
        time.sleep(max(0.0, INTERVAL - (time.monotonic() - started)))


async def through_gateway(
    port: int, pid: int, connection: redis.Redis, jobs: list[str]
) -> tuple[list[float], float]:
    latencies: list[float] = []
    readies = [asyncio.Event() for _ in jobs]
    tasks = [
        asyncio.create_task(sse_reader(port, job, latencies, ready, ROUNDS))
        for job, ready in zip(jobs, readies, strict=True)
    ]
    for ready in readies:
        await ready.wait()
    url = f"http://127.0.0.1:{port}/healthz"
    await asyncio.to_thread(
        wait_for, lambda: httpx.get(url).json()["subscribers"] >= len(jobs), 30, "subscribers"
    )
    connected = rss_mb(pid)
    await asyncio.to_thread(publish, connection, [keys.events(job) for job in jobs])
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return latencies, connected


def measure(redis_url: str, quick: bool = False) -> list[Row]:
    connection = redis.Redis.from_url(redis_url)
    queue = f"bench-gateway-{uuid.uuid4().hex[:8]}"
    settings = Settings.model_validate({"redis_url": redis_url, "queue": queue})
    rows: list[Row] = []
    with gateway(redis_url, queue) as (url, pid):
        port = int(url.rsplit(":", 1)[1])
        idle = rss_mb(pid)
        for count in SUBSCRIBERS[:2] if quick else SUBSCRIBERS:
            jobs = [enqueue(example_request(), settings=settings).job_id for _ in range(count)]
            ours, connected = asyncio.run(through_gateway(port, pid, connection, jobs))
            bare: list[float] = []
            streams = [keys.events(job) for job in jobs]
            for stream in streams:
                connection.delete(stream)
            reader = asyncio.run(bare_and_publish(redis_url, connection, streams, bare))
            del reader
            rows += _rows(count, ours, bare, (connected - idle) / count)
            for stream in streams:
                connection.delete(stream)
    connection.close()
    return rows


async def bare_and_publish(url: str, connection: redis.Redis, streams: list[str], bare: list[float]) -> None:
    reading = asyncio.create_task(bare_reader(url, streams, bare, ROUNDS * len(streams)))
    await asyncio.sleep(0.2)  # the reader is blocked on its XREAD
    await asyncio.to_thread(publish, connection, streams)
    await asyncio.wait_for(reading, 60)


def _rows(count: int, ours: list[float], bare: list[float], per_subscriber_mb: float) -> list[Row]:
    def ms(values: list[float], q: float) -> float:
        return percentile(values, q) * 1e3

    return [
        Row(
            "8 gateway",
            f"{count} subscribers: delivery p50 (ms)",
            f"{ms(ours, 50):.2f}",
            f"{ms(bare, 50):.2f} (bare XREAD)",
            f"+{ms(ours, 50) - ms(bare, 50):.2f} ms",
        ),
        Row(
            "",
            f"{count} subscribers: delivery p99 (ms)",
            f"{ms(ours, 99):.2f}",
            f"{ms(bare, 99):.2f} (bare XREAD)",
            f"+{ms(ours, 99) - ms(bare, 99):.2f} ms",
        ),
        Row("", f"{count} subscribers: gateway RSS per subscriber (MB)", f"{per_subscriber_mb:.3f}"),
        Row("", f"{count} subscribers: items received", f"{len(ours)}", f"{len(bare)} (bare XREAD)"),
    ]


def main() -> None:
    import argparse

    from .common import print_table, redis_server

    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 and 50 subscribers only")
    args = parser.parse_args()
    with redis_server() as redis_url:
        print_table(measure(redis_url, args.quick))


if __name__ == "__main__":
    main()
