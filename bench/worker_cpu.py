"""Section 2: the worker's CPU per chunk, from bytes on the socket to XADD acknowledged.

Both sides read the same simulated stream (the simulator in its own process, no pacing, a
200-product catalogue so the answer runs to about 1,400 chunks) and publish every item to a
real Redis; CPU is this process's `time.process_time()` (all threads) over the whole stream,
divided by the chunks the simulator sent.

- rankstream: the worker's own job coroutine (`worker.ranking.Ranking`) on its runtime: raw SSE
  bytes, the extractor, catalogue checks, the publisher's Lua step per item, metrics;
- openai SDK + instructor: `chat.completions.create(stream=True)` (a pydantic object per
  chunk), instructor's `Iterable` parser over the content deltas, an XADD per item;
- openai SDK alone: the same stream read as SDK objects, nothing parsed or published;
- floor: the same bytes read from a bare asyncio socket, nothing parsed or published: what any
  Python reader pays for the event loop, the wake-ups and the system calls.

Run twice: with the simulator unpaced (the stream arrives in large reads) and paced at 1,000
tokens a second, where every chunk is a read of its own, as from a real LLM.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid

import httpx
import openai
import redis
from instructor import IterableModel

from rankstream import keys
from rankstream.models import RankingRequest, Recommendation
from rankstream.settings import Settings
from worker.prompt import chat_request
from worker.ranking import Ending, Ranking
from worker.runtime import Runtime

from .common import Row, catalogue_request

PRODUCTS = 200


def _chunks_sent(llm_url: str) -> int:
    last: dict[str, int] = httpx.get(llm_url.removesuffix("/v1") + "/sim/requests", timeout=5).json()[-1]
    return int(last["tokens_sent"])


def rankstream_cpu(runtime: Runtime, request: RankingRequest, llm_url: str) -> float:
    job_id = keys.new_job_id()
    # The state enqueue() writes: the job's scripts refuse to write for a job without one.
    connection = redis.Redis.from_url(runtime.settings.redis_address)
    connection.hset(keys.state(job_id), mapping={"enqueued_at": repr(time.time()), "status": "queued"})
    connection.close()
    job = Ranking(runtime, job_id, request)
    start = time.process_time()
    result = runtime.submit(job.run()).result()
    cpu = time.process_time() - start
    assert result.ending is Ending.DONE, result
    return cpu / _chunks_sent(llm_url)


def sdk_instructor_cpu(
    client: openai.OpenAI, connection: redis.Redis, request: RankingRequest, llm_url: str
) -> float:
    body = chat_request(request, "rankstream-sim")
    catalogue = request.catalogue()
    stream_key = f"bench:sdk:{uuid.uuid4().hex}"
    start = time.process_time()

    def deltas():  # type: ignore[no-untyped-def]
        for chunk in client.chat.completions.create(**body, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content

    rank = 0
    for item in IterableModel(Recommendation).tasks_from_chunks(deltas()):  # type: ignore[attr-defined]
        if item.product_id in catalogue:
            rank += 1
            connection.xadd(
                stream_key, {"type": "item", "data": f'{{"rank":{rank},"product_id":"{item.product_id}"}}'}
            )
    cpu = time.process_time() - start
    assert rank == PRODUCTS, rank
    return cpu / _chunks_sent(llm_url)


def sdk_alone_cpu(client: openai.OpenAI, request: RankingRequest, llm_url: str) -> float:
    body = chat_request(request, "rankstream-sim")
    start = time.process_time()
    for _ in client.chat.completions.create(**body, stream=True):
        pass
    return (time.process_time() - start) / _chunks_sent(llm_url)


def floor_cpu(request: RankingRequest, llm_url: str) -> float:
    host, port = llm_url.split("//")[1].split("/")[0].split(":")
    body = json.dumps({**chat_request(request, "rankstream-sim"), "stream": True}).encode()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
        % host.encode()
    )

    async def read() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(head + b"content-length: %d\r\n\r\n%s" % (len(body), body))
        tail = b""
        while b"[DONE]" not in tail:
            data = await reader.read(65536)
            if not data:
                break
            tail = tail[-16:] + data
        writer.close()

    start = time.process_time()
    asyncio.run(read())
    return (time.process_time() - start) / _chunks_sent(llm_url)


def measure(redis_url: str, llm_url: str, runs: int, pace: str) -> list[Row]:
    request = RankingRequest.model_validate(catalogue_request(PRODUCTS))
    settings = Settings.model_validate(
        {"redis_url": redis_url, "fallback": False, "openai_base_url": llm_url}
    )
    runtime = Runtime(settings)
    client = openai.OpenAI(base_url=llm_url, api_key="unused", max_retries=0)
    connection = redis.Redis.from_url(redis_url)
    samples: dict[str, list[float]] = {"ours": [], "sdk+instructor": [], "sdk": [], "floor": []}
    try:
        rankstream_cpu(runtime, request, llm_url)  # warm: connections, imports, scripts loaded
        sdk_instructor_cpu(client, connection, request, llm_url)
        for _ in range(runs):
            samples["ours"].append(rankstream_cpu(runtime, request, llm_url))
            samples["sdk+instructor"].append(sdk_instructor_cpu(client, connection, request, llm_url))
            samples["sdk"].append(sdk_alone_cpu(client, request, llm_url))
            samples["floor"].append(floor_cpu(request, llm_url))
    finally:
        runtime.close()
    us = {name: statistics.median(values) * 1e6 for name, values in samples.items()}
    ours = us["ours"]
    return [
        Row(
            "2 worker",
            f"worker CPU per chunk, socket to XADD, {pace} (us)",
            f"{ours:.1f}",
            f"{us['sdk+instructor']:.1f} (openai SDK + instructor)",
            f"{us['sdk+instructor'] / ours:.1f}x less",
        ),
        Row("", "", "", f"{us['sdk']:.1f} (openai SDK objects alone)", f"{us['sdk'] / ours:.1f}x less"),
        Row("", "", "", f"{us['floor']:.1f} (floor: bare socket read)", f"{ours / us['floor']:.1f}x floor"),
    ]
