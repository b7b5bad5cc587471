"""`rankstream enqueue FILE|-`: enqueue a request JSON and print the handle JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..exceptions import InvalidRequest, RequestConflict


def register(sub: Any) -> None:
    parser = sub.add_parser("enqueue", help="enqueue a ranking request; prints the handle JSON")
    parser.add_argument("file", help="request JSON file, or - for standard input")
    parser.set_defaults(command=run)


def run(args: argparse.Namespace) -> int:
    from producer import enqueue

    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    except OSError as exc:
        return _refused(f"cannot read {args.file}: {exc.strerror}")
    try:
        request = json.loads(text)
    except json.JSONDecodeError as exc:
        return _refused(f"request: not valid JSON ({exc})")
    try:
        handle = enqueue(request)
    except InvalidRequest as exc:
        for error in exc.errors:
            _refused(f"{error['field']}: {error['message']}")
        return 2
    except RequestConflict as exc:
        return _refused(f"request_id: {exc}")
    print(handle.model_dump_json())
    return 0


def _refused(message: str) -> int:
    print(f"rankstream enqueue: {message}", file=sys.stderr)
    return 2
