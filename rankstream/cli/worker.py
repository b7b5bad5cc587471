"""`rankstream worker`: an RQ worker for ranking jobs, with /metrics."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..exceptions import LLMNotConfigured, RedisUnavailable
from .common import settings


def register(sub: Any) -> None:
    parser = sub.add_parser("worker", help="run an RQ worker for ranking jobs (serves /metrics)")
    parser.add_argument("--concurrency", type=int, help="jobs at once (RANKSTREAM_CONCURRENCY)")
    parser.add_argument(
        "--metrics-port",
        "--port",
        dest="metrics_port",
        type=int,
        help="port of /metrics, 0 for none (RANKSTREAM_METRICS_PORT, default 9464)",
    )
    parser.add_argument("--host", dest="metrics_host", help="address of /metrics (default 0.0.0.0)")
    parser.add_argument("--burst", action="store_true", help="quit when the queue is empty")
    parser.set_defaults(command=run)


def run(args: argparse.Namespace) -> int:
    from worker.runner import run_worker

    chosen = settings(
        concurrency=args.concurrency, metrics_port=args.metrics_port, metrics_host=args.metrics_host
    )
    try:
        run_worker(chosen, burst=args.burst)
    except (LLMNotConfigured, RedisUnavailable) as exc:
        print(f"rankstream worker: {exc}", file=sys.stderr)
        return 2
    return 0
