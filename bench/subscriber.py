"""A frontend stand-in in its own process: XREAD BLOCK on one stream, note when each entry arrives.

Reads the stream key from stdin (so it can be blocking before the key exists), prints
`[[entry_type, rank_or_seq, monotonic_seconds], ...]` as JSON after `count` entries or a terminal one.
CLOCK_MONOTONIC is one clock for every process on the machine, so times compare across processes.
"""

from __future__ import annotations

import json
import sys
import time

import redis


def main() -> None:
    url, count = sys.argv[1], int(sys.argv[2])
    client = redis.Redis.from_url(url)
    client.ping()
    print("ready", flush=True)
    key = sys.stdin.readline().strip()
    last = "0-0"
    seen: list[tuple[str, int, float]] = []
    while len(seen) < count:
        reply = client.xread({key: last}, block=4_000, count=100)  # under redis-py's 5 s socket timeout
        now = time.monotonic()
        if not reply:
            break
        for entry_id, fields in reply[0][1]:
            last = entry_id.decode()
            kind = fields[b"type"].decode()
            data = json.loads(fields[b"data"])
            seen.append((kind, int(data.get("rank", data.get("seq", 0))), now))
            if kind in ("done", "error"):
                count = 0
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    main()
