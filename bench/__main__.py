"""`python -m bench`: every section, one table. `--quick` for fewer runs, `--only 1,3` for some sections."""

from __future__ import annotations

import argparse
import os
import platform
import time

from . import concurrency, enqueueing, extractor, gateway, latency, pickup, redis_client, scrape, worker_cpu
from .common import Row, print_table, redis_server, simulator


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer runs (a smoke test, not a result)")
    parser.add_argument("--only", default="1,2,3,4,5,6,7,8,9", help="sections to run, e.g. 1,3")
    args = parser.parse_args()
    only = set(args.only.split(","))
    runs = 3 if args.quick else 5
    started = time.monotonic()
    print(
        f"# {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, {platform.platform()}"
    )
    rows: list[Row] = []
    if "1" in only:
        rows += extractor.measure(runs)
    with redis_server() as redis_url:
        if "2" in only:
            with simulator() as llm_url:
                rows += worker_cpu.measure(redis_url, llm_url, runs, "unpaced")
            with simulator(tokens_per_second=1000) as llm_url:
                rows += worker_cpu.measure(redis_url, llm_url, runs, "paced")
        if "3" in only:
            rows += latency.measure(redis_url, jobs=2 if args.quick else 6)
        if "4" in only:
            with simulator() as llm_url:
                rows += pickup.measure(redis_url, llm_url, jobs=20 if args.quick else 60)
        if "5" in only:
            rows += enqueueing.measure(
                redis_url, runs, calls=500 if args.quick else 2000, jobs=15 if args.quick else 40
            )
        if "6" in only:
            rows += redis_client.measure(redis_url, runs, quick=args.quick)
        if "7" in only:
            rows += concurrency.measure(redis_url, quick=args.quick)
        if "8" in only:
            rows += gateway.measure(redis_url, quick=args.quick)
        if "9" in only:
            rows += scrape.measure(redis_url, quick=args.quick)
    print_table(rows)
    print(f"# {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
