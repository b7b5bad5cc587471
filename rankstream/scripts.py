"""The atomic steps on one job's keys, as Lua scripts: the one place that defines them.

Each script touches only keys that share the job's hash tag, so they also run on Redis
Cluster. They are the reason every stream ends with exactly one terminal event and a
product_id appears at most once per job, whichever processes race. Each is also safe to run
twice with the same arguments (a client that retries after a lost reply): the second run
answers as the first did and writes nothing.

KEYS for every script: [state, events, published] (see rankstream.keys.job_keys).
Every script first checks that the state hash exists, and writes nothing if it does not: the job
expired (RANKSTREAM_STREAM_TTL) or was never made by enqueue(), so it is over for us. A late
writer can then never bring an expired job back as a stream holding one event.
Replies use these markers, read by the worker's publisher (worker/publish.py):
"""

from __future__ import annotations

ENDED = "ended"  # the job already has its terminal event, or its state is gone
CANCEL = "cancel"  # cancel was asked; nothing more is published
DUPLICATE = "duplicate"  # an earlier attempt published this product_id

# ARGV: ttl, job_id, model, now, token (unique per call site and attempt).
# Returns {attempt, {product_ids already published}, enqueued_at, started_at (of the first
# attempt, by any worker)}, or {ENDED} / {CANCEL}.
START = f"""
if redis.call('EXISTS', KEYS[1]) == 0 then return {{'{ENDED}'}} end
if redis.call('HEXISTS', KEYS[1], 'terminal') == 1 then return {{'{ENDED}'}} end
if redis.call('HGET', KEYS[1], 'cancel') == '1' then return {{'{CANCEL}'}} end
local attempt
if redis.call('HGET', KEYS[1], 'start_token') == ARGV[5] then
  attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt'))
else
  attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
  redis.call('HSET', KEYS[1], 'status', 'running', 'start_token', ARGV[5])
  redis.call('HSETNX', KEYS[1], 'started_at', ARGV[4])
  local data = '{{"job_id":' .. cjson.encode(ARGV[2]) .. ',"attempt":' .. attempt ..
               ',"model":' .. cjson.encode(ARGV[3]) .. '}}'
  redis.call('XADD', KEYS[2], '*', 'type', 'started', 'data', data)
  for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[1]) end
end
return {{attempt, redis.call('HKEYS', KEYS[3]), redis.call('HGET', KEYS[1], 'enqueued_at') or '',
        redis.call('HGET', KEYS[1], 'started_at') or ''}}
"""

# ARGV: product_id, the item's JSON object without its opening brace, ttl, now, attempt.
# KEYS[3] maps product_id -> "attempt:rank". Returns {rank}, or {DUPLICATE} / {ENDED} / {CANCEL};
# a product this same attempt already published answers with its rank again (a retried call).
PUBLISH_ITEM = f"""
if redis.call('EXISTS', KEYS[1]) == 0 then return {{'{ENDED}'}} end
if redis.call('HEXISTS', KEYS[1], 'terminal') == 1 then return {{'{ENDED}'}} end
if redis.call('HGET', KEYS[1], 'cancel') == '1' then return {{'{CANCEL}'}} end
local before = redis.call('HGET', KEYS[3], ARGV[1])
if before then
  local attempt, rank = string.match(before, '^(%d+):(%d+)$')
  if attempt == ARGV[5] then return {{tonumber(rank)}} end
  return {{'{DUPLICATE}'}}
end
local rank = redis.call('HLEN', KEYS[3]) + 1
redis.call('HSET', KEYS[3], ARGV[1], ARGV[5] .. ':' .. rank)
if rank == 1 then redis.call('HSET', KEYS[1], 'first_item_at', ARGV[4]) end
redis.call('XADD', KEYS[2], '*', 'type', 'item', 'data', '{{"rank":' .. rank .. ',' .. ARGV[2])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return {{rank}}
"""

# ARGV: type ('done' | 'error'), data JSON, ttl, now, token (unique per writer).
# Returns the entry id, or false if the job already had its terminal event from another writer
# or its state is gone.
FINISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('HSETNX', KEYS[1], 'terminal', ARGV[5]) == 0 then
  if redis.call('HGET', KEYS[1], 'terminal') == ARGV[5] then return redis.call('HGET', KEYS[1], 'terminal_id') end
  return false
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_at', ARGV[4])
local id = redis.call('XADD', KEYS[2], '*', 'type', ARGV[1], 'data', ARGV[2])
redis.call('HSET', KEYS[1], 'terminal_id', id)
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return id
"""

# KEYS: [state]. Sets the cancel flag of a job that still exists and answers its status
# (false if its state is gone: a late cancel must not recreate an expired job).
REQUEST_CANCEL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSET', KEYS[1], 'cancel', '1')
return redis.call('HGET', KEYS[1], 'status')
"""

# KEYS: [leases]. ARGV: job_id, now, until. Takes over a job whose lease ran out: only the one
# caller that finds it still expired moves it to `until` and gets 1; everyone else gets 0.
CLAIM_LEASE = """
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if held and tonumber(held) <= tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
return 0
"""

# KEYS: [leases]. ARGV: job_id, until. Drops a lease only if it is still the one a takeover set
# (`until`): a worker that has since taken the job up holds it with another score, and keeps it.
RELEASE_CLAIM = """
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if held and tonumber(held) == tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""

# KEYS: [leases]. ARGV: seconds, job_id... Takes or renews these jobs' leases until Redis's own
# now + seconds: a renewal that waited out a Redis stall is fresh when it lands, and every
# worker's leases run on one clock, whatever their hosts' clocks say.
HOLD_LEASES = """
local t = redis.call('TIME')
local expiry = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], string.format('%.6f', expiry), ARGV[i]) end
return #ARGV - 1
"""
