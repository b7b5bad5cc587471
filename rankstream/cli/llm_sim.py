"""`rankstream llm-sim`: the OpenAI-compatible LLM simulator, in the foreground."""

from __future__ import annotations

import argparse
from typing import Any

from .common import settings


def register(sub: Any) -> None:
    parser = sub.add_parser("llm-sim", help="run the OpenAI-compatible LLM simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--ttft", type=float, help="seconds to the first token (RANKSTREAM_SIM_TTFT)")
    parser.add_argument(
        "--tokens-per-second", type=float, help="token rate (RANKSTREAM_SIM_TOKENS_PER_SECOND)"
    )
    parser.add_argument("--fault", default="none", help="fault for every request (see docs)")
    parser.add_argument(
        "--refuse-format",
        action="append",
        default=[],
        choices=("json_schema", "json_object", "tools"),
        help="answer this way of asking for JSON with an error, as servers lacking it do (repeatable)",
    )
    parser.set_defaults(command=run)


def run(args: argparse.Namespace) -> int:
    from ..simulator import SimConfig, serve

    chosen = settings(sim_ttft=args.ttft, sim_tokens_per_second=args.tokens_per_second)
    config = SimConfig(
        ttft=chosen.sim_ttft,
        tokens_per_second=chosen.sim_tokens_per_second,
        fault=args.fault,
        refuse=tuple(args.refuse_format),
    )
    serve(args.host, args.port, config)
    return 0
