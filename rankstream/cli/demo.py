"""`rankstream demo`: the example end to end, streamed and then unstreamed, with nothing configured.

Starts what is missing (a private Redis, the LLM simulator, one worker process), enqueues the
example, prints each recommendation as it arrives, then asks for the same ranking unstreamed
and prints both times beside the original article's. Everything it started, it stops, also on
Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import time
from contextlib import ExitStack
from typing import Any

import openai

from ..dev import example
from ..dev.processes import rankstream, stop, wait_for_worker
from ..dev.redis_server import RedisServer, free_port
from ..settings import Settings
from .common import settings as current_settings


def register(sub: Any) -> None:
    parser = sub.add_parser("demo", help="run the example end to end, with nothing configured")
    parser.set_defaults(command=run)


def run(args: argparse.Namespace) -> int:
    return run_demo(current_settings())


def run_demo(settings: Settings) -> int:
    with ExitStack() as stack:
        env = dict(os.environ)
        if settings.redis_url is None:
            server = stack.enter_context(RedisServer())
            env["REDIS_URL"] = server.url
            redis_note = f"private redis-server on 127.0.0.1:{server.port}"
        else:
            redis_note = "REDIS_URL"
        llm_note = "OpenAI API" if settings.openai_api_key else (settings.openai_base_url or "")
        if not settings.llm_configured:
            from ..simulator import SimConfig, start_in_thread

            config = SimConfig(ttft=settings.sim_ttft, tokens_per_second=settings.sim_tokens_per_second)
            sim = stack.enter_context(start_in_thread(config))
            env["OPENAI_BASE_URL"] = sim.base_url
            llm_note = f"simulator (ttft {config.ttft:g} s, {config.tokens_per_second:g} tokens/s)"
        settings = settings.model_copy(
            update={"redis_url": env.get("REDIS_URL"), "openai_base_url": env.get("OPENAI_BASE_URL")}
        )  # fmt: skip
        worker = _start_worker(env, stack)
        print(f"rankstream demo · Redis: {redis_note} · LLM: {llm_note} · worker pid {worker.pid}")
        try:
            wait_for_worker(settings, worker)
        except (RuntimeError, TimeoutError) as exc:
            raise SystemExit(f"rankstream demo: {exc}") from None
        streamed = _streamed(settings)
        if streamed["first_item"] is None:
            print("no recommendation arrived, so there is nothing to compare (see the error above)")
            return 1
        try:
            unstreamed = _unstreamed(settings)
        except openai.APIError as exc:
            print(f"the unstreamed request failed: {exc}")
            return 1
        _compare(streamed, unstreamed)
    return 0


def _start_worker(env: dict[str, str], stack: ExitStack) -> subprocess.Popen[bytes]:
    env = {**env, "RANKSTREAM_METRICS_PORT": str(free_port()), "RANKSTREAM_LOG_LEVEL": "WARNING"}
    process = rankstream(["worker"], env)
    stack.callback(stop, process)
    return process


def _streamed(settings: Settings) -> dict[str, Any]:
    from producer import enqueue, events

    request = example.example_request()
    started = time.monotonic()
    handle = enqueue(request, settings=settings)
    print(f"enqueued job {handle.job_id}: {len(request.products)} products for customer 12345\n")
    first_item: float | None = None
    for event in events(handle, settings=settings, timeout=settings.job_timeout + 30):
        elapsed = time.monotonic() - started
        data = event.data
        if event.type == "item":
            first_item = first_item if first_item is not None else elapsed
            print(f"  +{elapsed:5.2f} s  {data['rank']:>2}. {data['product_name']}", flush=True)
        elif event.type == "done":
            print(f"\ndone: {data['count']} items, {sum(data['rejected'].values())} rejected, "
                  f"{elapsed:.2f} s from enqueue to the last event")  # fmt: skip
        elif event.type == "error":
            print(f"\nerror: {data['code']}: {data['message']}")
    return {"first_item": first_item, "total": time.monotonic() - started}


def _unstreamed(settings: Settings) -> float:
    from worker.llm import complete, make_client
    from worker.prompt import chat_request

    request = example.example_request()

    async def ask() -> float:
        client = make_client(settings)
        try:
            started = time.monotonic()
            await complete(client, chat_request(request, request.model or settings.model))
            return time.monotonic() - started
        finally:
            await client.close()

    print("\nasking for the same ranking unstreamed ...", flush=True)
    return asyncio.run(ask())


def _compare(streamed: dict[str, Any], unstreamed: float) -> None:
    first = streamed["first_item"]
    first_text = f"{first:.2f} s" if first is not None else "none"
    print()
    print(f"{'':24}{'first item':>12}{'full answer':>13}")
    print(f"{'streamed (this run)':24}{first_text:>12}{streamed['total']:>11.2f} s")
    print(f"{'unstreamed (this run)':24}{'-':>12}{unstreamed:>11.2f} s")
    print(
        f"{'original article':24}{example.ARTICLE_FIRST_ITEM_SECONDS:>10.2f} s"
        f"{example.ARTICLE_UNSTREAMED_SECONDS:>11.2f} s"
    )
    if first is not None:
        print(
            f"\nthe first recommendation was on screen {unstreamed / first:.1f}x sooner than the whole answer"
        )
