"""Closing brace leaving the LLM -> a subscriber holding the item, against a bare XADD -> XREAD.

A tiny SSE server stands in for the LLM so it can note the moment each element's closing
brace is handed to the kernel; the real `rankstream worker` process reads it, and a
subscriber in a third process XREAD BLOCKs on the job's stream. Items are 20 ms apart, so
each is measured on its own, as a user would see it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import uuid

import redis

from producer import enqueue
from rankstream.dev.redis_server import free_port

from .common import Row, catalogue_request, percentile, worker_on_own_queue

ITEMS = 50
GAP = 0.02


class Emitter:
    """An OpenAI-style streaming endpoint that records when each closing brace was sent."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sent: list[float] = []
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._ready.set()
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        headers = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in headers.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            ),
            0,
        )
        await reader.readexactly(length)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        await asyncio.sleep(0.3)  # time for the subscriber to be blocking on the stream
        send = self._sender(writer)
        await send('{"recommendations":[')
        for i in range(1, ITEMS + 1):
            for token in ("," if i > 1 else "", '{"', "product_id", '":"', str(i)):
                if token:
                    await send(token)
            await send('"}')
            self.sent.append(time.monotonic())
            await asyncio.sleep(GAP)
        await send("]}")
        writer.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")  # and the chunked body's end
        await writer.drain()
        writer.close()

    @staticmethod
    def _sender(writer: asyncio.StreamWriter):  # type: ignore[no-untyped-def]
        async def send(text: str) -> None:
            event = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
            writer.write(_chunk(b"data: " + json.dumps(event).encode() + b"\n\n"))
            await writer.drain()

        return send


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _subscriber(redis_url: str, count: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.subscriber", redis_url, str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


def _collect(process: subprocess.Popen[str], key: str) -> list[list[object]]:
    out, _ = process.communicate(key + "\n", timeout=60)
    result: list[list[object]] = json.loads(out.strip().splitlines()[-1])
    return result


def worker_latencies(redis_url: str, jobs: int) -> list[float]:
    emitter = Emitter()
    connection = redis.Redis.from_url(redis_url)
    latencies: list[float] = []
    request = catalogue_request(ITEMS)
    llm_url = f"http://127.0.0.1:{emitter.port}/v1"
    args = ["worker", "--metrics-port", "0"]
    with worker_on_own_queue(redis_url, llm_url, args, RANKSTREAM_FALLBACK="false") as settings:
        for _ in range(jobs):
            subscriber = _subscriber(redis_url, ITEMS + 2)
            emitter.sent.clear()
            handle = enqueue(request, settings=settings, connection=connection)
            seen = _collect(subscriber, handle.stream_key)
            received = {rank: at for kind, rank, at in seen if kind == "item"}
            latencies += [float(received[i]) - sent for i, sent in enumerate(emitter.sent, 1)]  # type: ignore[arg-type]
    return latencies


def bare_latencies(redis_url: str, samples: int) -> list[float]:
    connection = redis.Redis.from_url(redis_url)
    key = f"bench:bare:{uuid.uuid4().hex}"
    subscriber = _subscriber(redis_url, samples)
    assert subscriber.stdin is not None
    subscriber.stdin.write(key + "\n")
    subscriber.stdin.flush()
    time.sleep(0.2)  # let the subscriber block before the first entry (it only shifts nothing)
    sent = []
    for seq in range(samples):
        sent.append(time.monotonic())
        connection.xadd(key, {"type": "item", "data": json.dumps({"seq": seq})})
        time.sleep(0.005)
    out, _ = subscriber.communicate(timeout=60)
    seen = json.loads(out.strip().splitlines()[-1])
    connection.delete(key)
    return [at - sent[seq] for _, seq, at in seen]


def measure(redis_url: str, jobs: int) -> list[Row]:
    ours = worker_latencies(redis_url, jobs)
    bare = bare_latencies(redis_url, len(ours))
    rows = []
    for q in (50, 99):
        o, b = percentile(ours, q), percentile(bare, q)
        rows.append(
            Row(
                "3 latency",
                f"closing brace -> subscriber p{q} (ms)",
                f"{o * 1e3:.3f}",
                f"{b * 1e3:.3f} (bare XADD->XREAD)",
                f"{o / b:.1f}x",
            )
        )
    return rows
