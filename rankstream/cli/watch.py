"""`rankstream watch JOB_ID`: print a job's events as JSON lines; exit after the terminal one."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..exceptions import JobGone, JobNotFound


def register(sub: Any) -> None:
    parser = sub.add_parser("watch", help="print a job's events as they arrive (JSON lines)")
    parser.add_argument("job_id")
    parser.add_argument("--after", default="0-0", help="resume after this stream entry id")
    parser.set_defaults(command=run)


def run(args: argparse.Namespace) -> int:
    from producer import events

    try:
        for event in events(args.job_id, after=args.after):
            print(event.model_dump_json(), flush=True)
    except (JobNotFound, JobGone) as exc:
        print(f"rankstream watch: {exc}", file=sys.stderr)
        return 1
    return 0
