"""`rankstream gateway`: the HTTP gateway for frontends (REST, server-sent events, the demo page)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import settings

GRACEFUL_SHUTDOWN_SECONDS = 5  # SSE streams never end by themselves: clients resume elsewhere


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "gateway", help="serve rankings over HTTP and server-sent events, and the demo page"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.set_defaults(command=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from producer.gateway import create_app

    uvicorn.run(
        create_app(settings()),
        host=args.host,
        port=args.port,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        log_level="warning",
    )
    return 0
