"""Rate limits per key: a sliding log of starts per key in Redis, shared by every worker and host.

A job whose RQ meta carries ``rate`` (``{"key": ..., "limit": "60/minute"}``, written at submission
from the task's declaration) is admitted by ``admit`` after a worker popped it: it starts iff the
starts logged for its key in the window ending now number fewer than the limit; its start is
then logged at now. Otherwise the same script holds it (out of every queue list, in the key's
``held`` set) and the workers' ``release_due`` later moves as many held jobs as have free slots
back to the FRONT of their queue (high priority first, oldest first within one; jobs of a paused
queue stay held), logging a grant for each (its reserved slot, which its own admission takes
back). So no window of ``window`` seconds ever holds more than ``limit`` logged starts, and a
held job holds no worker. Several limits may share a key (two tasks keyed by one provider): each
admission counts its own window; the key's log keeps the longest window in use (at most the highest
rate x that window of starts): a window no limit used for its own length is forgotten, a replaced
override's at once. A limit used again later counts what the log still holds: its own starts are
all older than its window, other limits' older than the longest window then in use are gone.

Each step is one Lua script (atomic); the clock is Redis's ``TIME`` (one clock for every host)
unless a test passes ``now``. An operator's override (``OVERRIDES``, written by the API) wins over
the declared limit at the next admission or release. Everything per key expires or is deleted
once the key holds nothing: a tenant's rate key values never grow Redis without bound.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import suppress
from typing import Any

from redis import Redis
from redis.commands.core import Script
from rq.job import Job as RQJob
from rq.queue import Queue

from backend.broker.pauses import PAUSED_KEY
from backend.broker.replies import text
from backend.core.rate_spec import parse_rate
from backend.core.settings import QUEUE_NAMES

PREFIX = "jobservice:rl:"
#: Key -> time (s) its next slot frees, for keys that hold jobs.
DUE = PREFIX + "due"
#: RQ id -> key, for every held job (the reconciler counts them waiting; waiting facts).
HELD_JOBS = PREFIX + "held-jobs"
#: Key -> the limit text the held jobs declared (``release_due`` reads it).
LIMITS = PREFIX + "limits"
#: Key -> an operator's limit text (wins over the declared one).
OVERRIDES = PREFIX + "overrides"
#: ZSET key -> how many times a job of it was held (the metric ``jobservice_rate_limited_total``).
HELD_TOTAL = PREFIX + "held-counts"
#: ``HELD_TOTAL`` keeps at most this many keys: past it, the least held key other than the one just
#: held leaves, its count added to ``HELD_OTHER`` (OTHER_KEY): a key new after 1,000 still counts.
MAX_TOTAL_KEYS = 1000
HELD_OTHER = PREFIX + "held-other"
OTHER_KEY = "(other keys)"
#: The longest rate key (the same cap as TaskSpec.rate_for's).
MAX_KEY = 200
#: One ``release_due`` looks at most at this many due keys, and moves at most ``RELEASE_JOBS`` jobs
#: of each (the next call takes the rest): a script blocks Redis while it runs.
RELEASE_KEYS = 100
RELEASE_JOBS = 1000


def log_key(key: str) -> str:
    """The ZSET of a key's logged starts and grants (member RQ id, score its time)."""
    return f"{PREFIX}{key}:log"


def held_key(key: str) -> str:
    """The ZSET of a key's held RQ ids (score: its queue's priority rank x 1e10 + arrival time)."""
    return f"{PREFIX}{key}:held"


def windows_key(key: str) -> str:
    """The ZSET of the windows (s) a key's limits use, scored by last use (the log keeps the longest)."""
    return f"{PREFIX}{key}:windows"


def forget_replaced(pipe: Any, key: str, before: str | None, after: str | None) -> None:
    """Queue on ``pipe`` (an override's PUT/DELETE) forgetting the replaced override's window, so the
    log stops keeping its starts at once (a limit still using it adds it back before any trim)."""
    if before is not None and before != after:
        with suppress(ValueError):  # a garbled text in Redis never counted a window
            pipe.zrem(windows_key(key), f"o:{parse_rate(before).window_seconds}")


# Shared by the scripts: the grammar of backend/core/rate_spec.py, the clock, and score texts.
_PRELUDE = """
local UNITS = {second = 1, minute = 60, hour = 3600, day = 86400}
-- A limit text's count and window, or nil when it does not parse (garbled: no limit).
local function parse(text)
  if not text then return nil end
  local n, unit = string.match(text, '^(%d+)/(%a+)$')
  local w = UNITS[unit or '']
  if not w then n, w = string.match(text, '^(%d+)/(%d+)s$') end
  n, w = tonumber(n), tonumber(w)
  if not n or not w or n < 1 or n > 1000000 or w < 1 or w > 86400 then return nil end
  return n, w
end
-- Now in seconds: the caller's (tests' fake clock) or the server's, one clock for all hosts.
local function clock(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
-- A score as text, every digit kept (concatenated into '(' exclusive bounds).
local function fmt(x) return string.format('%.17g', x) end
-- Record the windows used now: the override's ('o:<s>', its PUT/DELETE forgets it) and the job's
-- declared one ('<s>', kept through an override: the declared limit comes back after it). Forget
-- each window unused for its own length (all its starts are out of it); the longest still in use.
local function in_use(windows, now, override, declared)
  if override then redis.call('ZADD', windows, fmt(now), 'o:' .. override) end
  if declared then redis.call('ZADD', windows, fmt(now), declared) end
  local longest, seen = 0, redis.call('ZRANGE', windows, 0, -1, 'WITHSCORES')
  for i = 1, #seen, 2 do
    local w = tonumber(string.match(seen[i], '(%d+)$'))
    if tonumber(seen[i + 1]) <= now - w then redis.call('ZREM', windows, seen[i])
    elseif w > longest then longest = w end
  end
  return longest
end
-- Trim a key's log to its longest window and drop entries dated after now (a clock stepped back
-- must not keep them in every window); how many remain within this limit's window.
local function trim(log, now, window, longest)
  redis.call('ZREMRANGEBYSCORE', log, '-inf', fmt(now - longest))
  redis.call('ZREMRANGEBYSCORE', log, '(' .. fmt(now + 1), '+inf')
  return redis.call('ZCOUNT', log, '(' .. fmt(now - window), '+inf')
end
-- When the next slot frees: as many entries of the window must leave as it holds beyond count - 1.
local function next_slot(log, now, window, count, inwindow)
  local from = '(' .. fmt(now - window)
  local at = redis.call('ZRANGEBYSCORE', log, from, '+inf', 'WITHSCORES', 'LIMIT', inwindow - count, 1)
  return tonumber(at[2]) + window
end
"""

# KEYS: log, held, due, held-jobs, limits, overrides, held-counts, held-other, window
# ARGV: key, rq id, declared limit text, now ('' = server time), max keys counted, priority rank
_ADMIT = (
    _PRELUDE
    + """
local now = clock(ARGV[4])
-- The limit: the operator's override when it parses, else the job's declared one.
local oc, ow = parse(redis.call('HGET', KEYS[6], ARGV[1]))
local dc, dw = parse(ARGV[3])
local count, window = oc or dc, ow or dw
if not count then return false end
-- The log keeps the longest window a limit of this key still uses (a shorter one must not erase it).
local longest = in_use(KEYS[9], now, ow, dw)
local ttl = math.ceil(longest * 2000)
redis.call('PEXPIRE', KEYS[9], ttl)
-- Take back this job's own grant (a release reserved it); count this limit's window only.
local granted = redis.call('ZREM', KEYS[1], ARGV[2])
local inwindow = trim(KEYS[1], now, window, longest)
if inwindow < count then
  -- Admitted: logged at now, so every later admission within the window counts it.
  redis.call('ZADD', KEYS[1], fmt(now), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ttl)
  return false
end
-- Held: by priority (its queue's rank), then arrival; a grant that came too late goes back to
-- the head of its priority.
local base = tonumber(ARGV[6]) * 1e10
local order = base + math.max(now, 0)
local head = redis.call('ZRANGEBYSCORE', KEYS[2], fmt(base), '(' .. fmt(base + 1e10), 'WITHSCORES', 'LIMIT', 0, 1)
if granted == 1 and head[2] then order = math.max(base, math.min(order, tonumber(head[2]) - 1)) end
redis.call('ZADD', KEYS[2], fmt(order), ARGV[2])
redis.call('HSET', KEYS[4], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[5], ARGV[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
local due = next_slot(KEYS[1], now, window, count, inwindow)
redis.call('ZADD', KEYS[3], 'LT', fmt(due), ARGV[1])
-- The metric's counts, capped in keys: past the cap the least held other key folds into one count.
redis.call('ZINCRBY', KEYS[7], 1, ARGV[1])
if redis.call('ZCARD', KEYS[7]) > tonumber(ARGV[5]) then
  local low = redis.call('ZRANGE', KEYS[7], 0, 1, 'WITHSCORES')
  local i = (low[1] == ARGV[1]) and 3 or 1
  redis.call('ZREM', KEYS[7], low[i])
  redis.call('INCRBY', KEYS[8], tonumber(low[i + 1]))
end
return fmt(due)
"""
)

# KEYS: due, held-jobs, limits, overrides, paused queues
# ARGV: now ('' = server time), max keys, key prefix, RQ job prefix, RQ queue prefix, max jobs per key,
#       then the queue names by priority rank (a held job's score band: rank x 1e10 .. +1e10)
_RELEASE = (
    _PRELUDE
    + """
local now, most = clock(ARGV[1]), tonumber(ARGV[6])
local paused = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[5])) do paused[name] = true end
-- Due keys, and keys due beyond any window (dated before Redis's clock stepped back).
local keys = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', fmt(now), 'LIMIT', 0, tonumber(ARGV[2]))
for _, key in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. fmt(now + 86400), '+inf', 'LIMIT', 0, 10)) do
  table.insert(keys, key)
end
local released = 0
for _, key in ipairs(keys) do
  local log, held = ARGV[3] .. key .. ':log', ARGV[3] .. key .. ':held'
  -- The key's limit now: the override, else the declared one; neither parses: no limit.
  local count, window = parse(redis.call('HGET', KEYS[4], key))
  local over = count and window
  if not count then count, window = parse(redis.call('HGET', KEYS[3], key)) end
  local free, longest = math.huge, 0
  if count then
    longest = in_use(ARGV[3] .. key .. ':windows', now, over, not over and window)
    free = count - trim(log, now, window, longest)
  end
  -- A bounded step: one call moves or drops at most ARGV[6] held jobs of a key (the next goes on).
  local capped = free > most
  if capped then free = most end
  -- Walk the queues' score bands by priority while slots are free: a paused queue's band is skipped
  -- whole (held in place, no slot, no walk); an open one's oldest ids go. A job no longer queued
  -- (cancelled) leaves, taking no slot; one of a paused queue in the last band (other names) stays.
  local pushes, looked = {}, 0
  for rank = 0, #ARGV - 6 do
    local name = ARGV[7 + rank]
    if free > 0 and looked < most and not (name and paused[name]) then
      local lo, hi, kept = fmt(rank * 1e10), name and '(' .. fmt((rank + 1) * 1e10) or '+inf', 0
      while free > 0 and looked < most do
        local ids = redis.call('ZRANGEBYSCORE', held, lo, hi, 'LIMIT', kept, math.min(free, most - looked))
        if #ids == 0 then break end
        for _, id in ipairs(ids) do
          local job = redis.call('HMGET', ARGV[4] .. id, 'status', 'origin')
          if job[1] == 'queued' and job[2] and paused[job[2]] then
            kept = kept + 1
          else
            looked = looked + 1
            redis.call('ZREM', held, id)
            redis.call('HDEL', KEYS[2], id)
            if job[1] == 'queued' and job[2] then
              pushes[job[2]] = pushes[job[2]] or {}
              table.insert(pushes[job[2]], id)
              -- The grant: its slot, counted by every admission until the job's own takes it back.
              if count then redis.call('ZADD', log, fmt(now), id) end
              free = free - 1
              released = released + 1
            end
          end
        end
        if kept >= most then break end
      end
    end
  end
  -- Back to the FRONT of the origin queue, in release order.
  for origin, ids in pairs(pushes) do
    for i = #ids, 1, -1 do redis.call('LPUSH', ARGV[5] .. origin, ids[i]) end
  end
  if count then
    redis.call('PEXPIRE', log, math.ceil(longest * 2000))
    redis.call('PEXPIRE', ARGV[3] .. key .. ':windows', math.ceil(longest * 2000))
  end
  -- Nothing held: the key leaves the due set. Stopped by the bound: due now. Slots left over: only
  -- paused queues' jobs remain, look again in a second (a resume). Else: when its next slot frees.
  if redis.call('ZCARD', held) == 0 then
    redis.call('ZREM', KEYS[1], key)
    redis.call('HDEL', KEYS[3], key)
  elseif looked >= most or (capped and free == 0) then
    redis.call('ZADD', KEYS[1], fmt(now), key)
  elseif free > 0 then
    redis.call('ZADD', KEYS[1], fmt(now + 1), key)
  else
    local inwindow = redis.call('ZCOUNT', log, '(' .. fmt(now - window), '+inf')
    redis.call('ZADD', KEYS[1], fmt(next_slot(log, now, window, count, inwindow)), key)
  end
end
return released
"""
)

# KEYS: held-jobs, due; ARGV: RQ ids. Returns id, key, due time (text, '' when unknown) triples.
_HELD_UNTIL = """
local out = {}
for _, id in ipairs(ARGV) do
  local key = redis.call('HGET', KEYS[1], id)
  if key then
    local due = redis.call('ZSCORE', KEYS[2], key)
    for _, value in ipairs({id, key, due or ''}) do table.insert(out, value) end
  end
end
return out
"""

_SOURCES = {"admit": _ADMIT, "release": _RELEASE, "held_until": _HELD_UNTIL}
#: Registered once per process; each call names the connection it runs on (EVALSHA, loaded on a miss).
_scripts: dict[str, Script] = {}


def _script(connection: Redis, name: str) -> Script:
    script = _scripts.get(name)
    if script is None:
        script = _scripts[name] = connection.register_script(_SOURCES[name])
    return script


def _now(now: float | None) -> str:
    return "" if now is None else repr(float(now))


def declared_rate(meta: Any) -> tuple[str, str] | None:
    """The (key, canonical limit text) a job's RQ meta declares, or None: absent or garbled meta
    means no limit (never an exception in the worker)."""
    try:
        rate = meta.get("rate") if isinstance(meta, dict) else None
        if not isinstance(rate, dict):
            return None
        key, limit = rate.get("key"), rate.get("limit")
        if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY:
            return None
        return key, parse_rate(limit).text
    except (ValueError, TypeError):
        return None


def admit(connection: Redis, job: RQJob, now: float | None = None) -> float | None:
    """None: the job may start now (its start is logged). A float: the limiter holds the job (it is
    in no queue list now) and its key's next slot frees at that time (epoch seconds).

    Raises:
        RedisError: Redis is unreachable or refused (the worker's loop handles it).
    """
    try:
        meta = job.meta
    except Exception:  # an unreadable meta is no limit, not a crashed worker
        return None
    rate = declared_rate(meta)
    if rate is None:
        return None
    key, limit = rate
    origin = getattr(job, "origin", None)
    rank = QUEUE_NAMES.index(origin) if origin in QUEUE_NAMES else len(QUEUE_NAMES)
    keys = [log_key(key), held_key(key), DUE, HELD_JOBS, LIMITS, OVERRIDES, HELD_TOTAL, HELD_OTHER, windows_key(key)]
    args = [key, job.id, limit, _now(now), MAX_TOTAL_KEYS, rank]
    due = _script(connection, "admit")(keys=keys, args=args, client=connection)
    return None if due is None else float(due)


def release_due(connection: Redis, now: float | None = None) -> int:
    """Move the held jobs whose slots are free back to the front of their queues; how many moved.

    Raises:
        RedisError: Redis is unreachable or refused.
    """
    prefixes = [PREFIX, RQJob.redis_job_namespace_prefix, Queue.redis_queue_namespace_prefix]
    args = [_now(now), RELEASE_KEYS, *prefixes, RELEASE_JOBS, *QUEUE_NAMES]
    keys = [DUE, HELD_JOBS, LIMITS, OVERRIDES, PAUSED_KEY]
    return int(_script(connection, "release")(keys=keys, args=args, client=connection))


def wake(connection: Redis, key: str) -> None:
    """Make ``key``'s held jobs due now (after an override changed its limit): the next
    ``release_due`` of any worker releases as many as the new limit allows."""
    connection.zadd(DUE, {key: 0}, xx=True)


def held_ids(connection: Redis) -> set[str]:
    """The RQ ids of every held job (they wait, though in no queue list)."""
    return {text(rq_id) for rq_id in connection.hkeys(HELD_JOBS)}


def held_until(connection: Redis, rq_ids: Iterable[str]) -> dict[str, tuple[str, float | None]]:
    """For each of ``rq_ids`` that the limiter holds: (its key, when the key's next slot frees,
    epoch seconds, or None when not known). One round trip."""
    ids = list(rq_ids)
    if not ids:
        return {}
    flat = _script(connection, "held_until")(keys=[HELD_JOBS, DUE], args=ids, client=connection)
    found = {}
    for index in range(0, len(flat), 3):
        due = text(flat[index + 2])
        found[text(flat[index])] = (text(flat[index + 1]), float(due) if due else None)
    return found


def held_counts(connection: Redis, keys: Iterable[str]) -> dict[str, int]:
    """How many jobs of each of ``keys`` are held now (one pipelined ZCARD each)."""
    names = list(keys)
    with connection.pipeline(transaction=False) as pipe:
        for key in names:
            pipe.zcard(held_key(key))
        counts = pipe.execute()
    return dict(zip(names, counts, strict=True))


def held_totals(connection: Redis, top: int = 100) -> dict[str, int]:
    """How many times a job of each key was held, for the ``top`` keys with the most, and under
    OTHER_KEY the counts of keys that left the capped set (one round trip)."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.zrevrange(HELD_TOTAL, 0, top - 1, withscores=True)
        pipe.get(HELD_OTHER)
        ranked, other = pipe.execute()
    totals = {text(key): int(count) for key, count in ranked}
    if other and int(other) > 0:
        totals[OTHER_KEY] = totals.get(OTHER_KEY, 0) + int(other)
    return totals
