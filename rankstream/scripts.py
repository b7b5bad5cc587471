"""The atomic steps on one job's keys, as Lua scripts.

Each script touches only keys that share the job's hash tag, so they also run on Redis
Cluster. They are the reason every stream ends with exactly one terminal event and a
product_id appears at most once per job, whichever processes race.

KEYS for every script: [state, events, published] (see rankstream.keys.job_keys).
"""

from __future__ import annotations

import redis

# ARGV: ttl, job_id, model, now.  Returns {attempt, already_published, enqueued_at}; attempt is
# -1 if the job has ended (cancelled while queued, or finished elsewhere), -2 if cancel was asked.
START = """
if redis.call('HEXISTS', KEYS[1], 'terminal') == 1 then return {-1, 0, ''} end
if redis.call('HGET', KEYS[1], 'cancel') == '1' then return {-2, 0, ''} end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'status', 'running')
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[4])
local data = '{"job_id":' .. cjson.encode(ARGV[2]) .. ',"attempt":' .. attempt ..
             ',"model":' .. cjson.encode(ARGV[3]) .. '}'
redis.call('XADD', KEYS[2], '*', 'type', 'started', 'data', data)
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[1]) end
return {attempt, redis.call('SCARD', KEYS[3]), redis.call('HGET', KEYS[1], 'enqueued_at') or ''}
"""

# ARGV: product_id, the item's JSON object without its opening brace, ttl, now.
# Returns {rank, entry_id}; {0, ''} for a duplicate; {-1, ''} if the job has ended;
# {-2, ''} if cancel was asked (the item is not published).
PUBLISH_ITEM = """
if redis.call('HEXISTS', KEYS[1], 'terminal') == 1 then return {-1, ''} end
if redis.call('HGET', KEYS[1], 'cancel') == '1' then return {-2, ''} end
if redis.call('SADD', KEYS[3], ARGV[1]) == 0 then return {0, ''} end
local rank = redis.call('SCARD', KEYS[3])
if rank == 1 then redis.call('HSET', KEYS[1], 'first_item_at', ARGV[4]) end
local id = redis.call('XADD', KEYS[2], '*', 'type', 'item', 'data', '{"rank":' .. rank .. ',' .. ARGV[2])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return {rank, id}
"""

# ARGV: type ('done' | 'error'), data JSON, ttl, now.
# Returns the entry id, or false if the job already had its terminal event.
FINISH = """
if redis.call('HSETNX', KEYS[1], 'terminal', ARGV[1]) == 0 then return false end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_at', ARGV[4])
local id = redis.call('XADD', KEYS[2], '*', 'type', ARGV[1], 'data', ARGV[2])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return id
"""


def finish_sync(
    client: redis.Redis, keys: list[str], event_type: str, data: str, ttl: int, now: float
) -> bool:
    """Write the terminal event unless there is one already; True if this call wrote it."""
    entry_id = client.register_script(FINISH)(keys=keys, args=[event_type, data, ttl, now])
    return bool(entry_id)
