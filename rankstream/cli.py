"""The `rankstream` command: one entry point, one subcommand per part."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .exceptions import InvalidRequest, JobGone, JobNotFound
from .settings import Settings, get_settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(os.environ.get("RANKSTREAM_LOG_LEVEL", "INFO").upper())
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except KeyboardInterrupt:
        return 130


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":  # one line per HTTP request is noise next to the job's own log
        for name in ("httpx", "httpx2", "openai"):
            logging.getLogger(name).setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rankstream", description="Stream LLM product rankings item by item, from an RQ job to the page."
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the example end to end, with nothing configured")
    demo.set_defaults(command=_demo)

    worker = sub.add_parser("worker", help="run an RQ worker for ranking jobs (serves /metrics)")
    worker.add_argument("--concurrency", type=int, help="jobs at once (RANKSTREAM_CONCURRENCY)")
    worker.add_argument(
        "--metrics-port",
        "--port",
        dest="metrics_port",
        type=int,
        help="port of /metrics, 0 for none (RANKSTREAM_METRICS_PORT, default 9464)",
    )
    worker.add_argument("--host", dest="metrics_host", help="address of /metrics (default 0.0.0.0)")
    worker.add_argument("--burst", action="store_true", help="quit when the queue is empty")
    worker.set_defaults(command=_worker)

    enqueue = sub.add_parser("enqueue", help="enqueue a ranking request; prints the handle JSON")
    enqueue.add_argument("file", help="request JSON file, or - for standard input")
    enqueue.set_defaults(command=_enqueue)

    watch = sub.add_parser("watch", help="print a job's events as they arrive (JSON lines)")
    watch.add_argument("job_id")
    watch.add_argument("--after", default="0-0", help="resume after this stream entry id")
    watch.set_defaults(command=_watch)

    sim = sub.add_parser("llm-sim", help="run the OpenAI-compatible LLM simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8001)
    sim.add_argument("--ttft", type=float, help="seconds to the first token (RANKSTREAM_SIM_TTFT)")
    sim.add_argument("--tokens-per-second", type=float, help="token rate (RANKSTREAM_SIM_TOKENS_PER_SECOND)")
    sim.add_argument("--fault", default="none", help="fault for every request (see docs)")
    sim.set_defaults(command=_llm_sim)
    return parser  # fmt: skip


def _settings(**overrides: Any) -> Settings:
    """The environment's settings with the command line's flags on top, validated alike."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return get_settings()
    try:
        return Settings.model_validate({**get_settings().model_dump(), **given})
    except ValidationError as exc:
        raise SystemExit(f"rankstream: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None


def _worker(args: argparse.Namespace) -> int:
    from worker.runner import run_worker

    settings = _settings(
        concurrency=args.concurrency, metrics_port=args.metrics_port, metrics_host=args.metrics_host
    )
    run_worker(settings, burst=args.burst)
    return 0


def _enqueue(args: argparse.Namespace) -> int:
    from producer import enqueue

    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    except OSError as exc:
        print(f"rankstream enqueue: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        request = json.loads(text)
    except json.JSONDecodeError as exc:
        print(f"rankstream enqueue: request: not valid JSON ({exc})", file=sys.stderr)
        return 2
    try:
        handle = enqueue(request)
    except InvalidRequest as exc:
        for error in exc.errors:
            print(f"rankstream enqueue: {error['field']}: {error['message']}", file=sys.stderr)
        return 2
    print(handle.model_dump_json())
    return 0


def _watch(args: argparse.Namespace) -> int:
    from producer import events

    try:
        for event in events(args.job_id, after=args.after):
            print(event.model_dump_json(), flush=True)
    except (JobNotFound, JobGone) as exc:
        print(f"rankstream watch: {exc}", file=sys.stderr)
        return 1
    return 0


def _llm_sim(args: argparse.Namespace) -> int:
    from .simulator import SimConfig, serve

    settings = get_settings()
    config = SimConfig(
        ttft=settings.sim_ttft if args.ttft is None else args.ttft,
        tokens_per_second=settings.sim_tokens_per_second
        if args.tokens_per_second is None
        else args.tokens_per_second,
        fault=args.fault,
    )
    serve(args.host, args.port, config)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(get_settings())
