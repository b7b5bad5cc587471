"""The `rankstream` command: one entry point, one module per subcommand.

This package is the one place that wires the parts together: each subcommand module imports
the part it runs (worker, producer, simulator) only when that subcommand is chosen.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from . import demo, enqueue, gateway, llm_sim, watch, worker
from .common import configure_logging

SUBCOMMANDS = (demo, worker, gateway, enqueue, watch, llm_sim)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rankstream", description="Stream LLM product rankings item by item, from an RQ job to the page."
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except KeyboardInterrupt:
        return 130
