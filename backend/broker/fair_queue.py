"""Fair share across owners: the submission index beside RQ's lists, and the worker's one-script pop.

RQ's queue lists stay complete (RQ Dashboard, ``rq info``, depths, cancel's LREM and the
reconciler's ``queued_ids`` read them as before). A submission that RQ pushes onto a list now
also writes, in the same MULTI, an index entry (rq_id -> owner), the id at the tail of its
owner's FIFO, and the owner into the queue's owners ZSET (NX, score 0: "new"). The pop script
takes, in the first open non-empty queue, the oldest job of the owner with the lowest virtual
time, and charges that owner 1/weight (kept when its FIFO empties, forgotten once it reaches the
top idle): a small weighted fair queue whose state is bounded by the jobs waiting and the owners
active lately (an empty list drops it; so does the reconciler's pass, ``drop_idle_state``; a
cancel removes its job's entries, ``forget``). Jobs RQ pushes itself when they fall due (the
scheduler, dependants, RQ's concurrency promotion, a rate limiter's release) are not indexed and
go to the FRONT of the list (queues.py creates them with ``enqueue_at_front`` under fair share):
the run of them at the head is one more participant of the rotation, "due", with its own virtual
time (charged 1 per pop), so they get their share of the pops, never all of them. An indexed
head whose owner's fair entries were lost goes first (else nothing could reach it). The script
reads the paused set itself, so no pop can race a pause (DESIGN15 sections 1 and 2). A worker's
pop (``take``, issue 17: fewer round trips per job) also answers the popped job's RQ hash (no
HGETALL after it), reads ``rq suspend``'s key (popping nothing while it exists) and, when nothing is
ready, writes the worker's state idle (RQ writes it after each job; with a backlog that write told
no one anything: the next job's "busy" follows at once).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from redis import Redis
from redis.client import Pipeline
from redis.commands.core import Script
from rq.job import Job as RQJob
from rq.queue import Queue
from rq.suspension import WORKERS_SUSPENDED
from rq.utils import now, utcformat

from backend.broker.pauses import PAUSED_KEY
from backend.broker.replies import text

#: Stale ids (cancelled, taken by the blocking fallback) one pop drops from one owner's FIFO before it
#: moves on to the next owner; a pop tries at most ``MAX_STALE_PER_POP * 5`` steps in all, then takes
#: the head of the list: a pop never loops long inside Redis, whatever was cancelled.
MAX_STALE_PER_POP = 100
#: How far from the head the pop looks for a picked job before it removes it from the tail end
#: instead (LREM walks from where it starts: a recent job behind a long backlog is near the tail).
HEAD_PROBE = 1000


def fair_prefix(queue: str) -> str:
    """The prefix of one queue's fair state: ``index`` (HASH), ``owners`` (ZSET), ``clock``, ``due``, ``owner:<o>``."""
    return f"jobservice:fair:{queue}:"


def index_writes(pipe: Pipeline, queue: str, rq_id: str, owner: str) -> None:
    """Queue the index writes of one job RQ is pushing onto ``queue`` now (same MULTI, no round trip)."""
    prefix = fair_prefix(queue)
    pipe.hset(prefix + "index", rq_id, owner)
    pipe.rpush(prefix + "owner:" + owner, rq_id)
    # Score 0 means "new": the pop lifts it to the queue's clock, so a newcomer gets no credit
    # for the time it was away (the clock cannot be read inside a MULTI). NX: an owner still in
    # the set (its FIFO emptied moments ago) keeps its virtual time.
    pipe.zadd(prefix + "owners", {owner: 0}, nx=True)


# Lua shared by the scripts: drop one queue's fair state; remove one id from a list, walking from
# the end nearer to it (a probe of HEAD_PROBE entries from the head, else from the tail).
_LUA_HELPERS = f"""
local function drop(fk)
  if redis.call('EXISTS', fk .. 'owners') == 1 then
    for _, owner in ipairs(redis.call('ZRANGE', fk .. 'owners', 0, -1)) do
      redis.call('DEL', fk .. 'owner:' .. owner)
    end
  end
  redis.call('DEL', fk .. 'owners', fk .. 'index', fk .. 'clock', fk .. 'due')
end
local function remove(list, id)
  if redis.call('LPOS', list, id, 'MAXLEN', {HEAD_PROBE}) then return redis.call('LREM', list, 1, id) end
  return redis.call('LREM', list, -1, id)
end
"""

# KEYS[1] the paused set; a worker's take adds KEYS[2] RQ's suspension key, KEYS[3] its worker key
# and KEYS[4] its executions key. ARGV: fair flag ("1"/"0"), RQ's job key prefix, RQ's queue key
# prefix, a worker's heartbeat (RQ's last_heartbeat text, TTL seconds; else ""), n, n queue names in
# priority order, then weight pairs (owner, weight), then MAX_STALE_PER_POP. A worker's take first
# writes RQ's heartbeat (``Worker.heartbeat``'s three writes) when its key exists: beat = 1, else 0.
# Returns {1, beat, queue, rq_id, the job's hash as HGETALL answers it}, {0, beat, open queue
# names...} when nothing is ready (the caller blocks; a worker's take that beat wrote its state
# idle), or {2, beat} while ``rq suspend`` holds (a worker's take: nothing popped).
POP_SCRIPT = (
    _LUA_HELPERS
    + """
local fair, job_prefix, queue_prefix, n = ARGV[1] == '1', ARGV[2], ARGV[3], tonumber(ARGV[6])
local max_stale = tonumber(ARGV[#ARGV])
local weights = {}
for i = 7 + n, #ARGV - 2, 2 do weights[ARGV[i]] = tonumber(ARGV[i + 1]) end
local taking, beat = #KEYS >= 4, 0
if taking and redis.call('EXISTS', KEYS[3]) == 1 then  -- never a partial worker hash
  redis.call('HSET', KEYS[3], 'last_heartbeat', ARGV[4])
  redis.call('EXPIRE', KEYS[3], ARGV[5])
  redis.call('EXPIRE', KEYS[4], ARGV[5])
  beat = 1
end
if taking and redis.call('EXISTS', KEYS[2]) == 1 then return {2, beat} end
-- The oldest waiting job of the owner with the lowest virtual time, or nil (only stale ids met).
local function pick(list, fk)
  local owners, index = fk .. 'owners', fk .. 'index'
  local clock = tonumber(redis.call('GET', fk .. 'clock') or '0')
  local rank, stale = 0, 0
  for _ = 1, 5 * max_stale do
    local top = redis.call('ZRANGE', owners, rank, rank, 'WITHSCORES')
    if #top == 0 then return nil end
    local owner = top[1]
    local id = redis.call('LPOP', fk .. 'owner:' .. owner)
    if not id then
      -- Idle: at the top its time is at most everyone's, so forgetting it loses nothing.
      if rank == 0 then redis.call('ZREM', owners, owner) else rank, stale = rank + 1, 0 end
    elseif redis.call('HEXISTS', index, id) == 1 and redis.call('HGET', job_prefix .. id, 'status') == 'queued'
        and remove(list, id) == 1 then
      redis.call('HDEL', index, id)
      local base = math.max(tonumber(top[2]), clock)  -- a new owner starts at the clock
      -- Charged 1/weight; kept when its FIFO empties (ZADD NX at its next submission keeps it).
      redis.call('ZADD', owners, base + 1 / (weights[owner] or 1), owner)
      redis.call('SET', fk .. 'clock', base)
      return id
    else
      -- Stale (cancelled, deleted, taken by the fallback): dropped, not charged. After
      -- max_stale of one owner's, the next owner's turn (the rest are dropped by later pops).
      redis.call('HDEL', index, id)
      stale = stale + 1
      if stale >= max_stale then rank, stale = rank + 1, 0 end
    end
  end
  return nil
end
-- Take one id from a non-empty list: by fair share, where the run of unindexed jobs at the head
-- (pushed there by RQ when due) is one more participant, "due"; the head when fair share is off.
local function take(list, fk)
  local head = redis.call('LINDEX', list, 0)
  if not fair then
    drop(fk)  -- an API still indexing (FAIR_SHARE differs): no state kept for it
  else
    local owner = redis.call('HGET', fk .. 'index', head)
    if not owner then
      -- "due"'s virtual time, lifted to the clock like a new owner's: the head goes when it is at
      -- most the lowest owner's, else the owners' pick (a batch falling due gets its share of
      -- the pops, about 1/(owners + 1) while others wait: never all of them, never none).
      local clock = tonumber(redis.call('GET', fk .. 'clock') or '0')
      local due = math.max(tonumber(redis.call('GET', fk .. 'due') or '0'), clock)
      local low = redis.call('ZRANGE', fk .. 'owners', 0, 0, 'WITHSCORES')
      if #low > 0 and due > math.max(tonumber(low[2]), clock) then
        local id = pick(list, fk)
        if id then return id end
      else
        redis.call('SET', fk .. 'clock', due)
      end
      redis.call('SET', fk .. 'due', due + 1)  -- charged 1 per pop, like an owner of weight 1
    else
      local fifo_kept = redis.call('EXISTS', fk .. 'owner:' .. owner) == 1
      if fifo_kept and redis.call('ZSCORE', fk .. 'owners', owner) then
        local id = pick(list, fk)
        if id then return id end
      elseif fifo_kept then
        -- Its owner's place was lost (evicted, deleted): the fair path could never reach this
        -- head, so it goes now, and the owner is back among the owners at the clock.
        redis.call('ZADD', fk .. 'owners', 'NX', redis.call('GET', fk .. 'clock') or '0', owner)
      end
    end
  end
  -- "due"'s turn, its owner's fair entries lost, fair share off, or only stale ids met: the head.
  redis.call('LPOP', list)
  redis.call('HDEL', fk .. 'index', head)
  return head
end
local open = {}
for i = 7, 6 + n do
  local name = ARGV[i]
  if redis.call('SISMEMBER', KEYS[1], name) == 0 then  -- paused: skipped, read atomically
    open[#open + 1] = name
    local list, fk = queue_prefix .. name, 'jobservice:fair:' .. name .. ':'
    if redis.call('LLEN', list) > 0 then
      local id = take(list, fk)
      return {1, beat, name, id, redis.call('HGETALL', job_prefix .. id)}
    end
    drop(fk)  -- an empty list: whatever fair state is left is stale (no growth)
  end
end
if beat == 1 then redis.call('HSET', KEYS[3], 'state', 'idle') end  -- about to block: RQ's IDLE
return {0, beat, unpack(open)}
"""
)

# ARGV: RQ's queue key prefix, queue names. Drops the fair state of each queue whose list is empty
# (the reconciler's pass: a queue no worker pops, or a long pause, keeps nothing).
DROP_IDLE_SCRIPT = (
    _LUA_HELPERS
    + """
local dropped = 0
for i = 2, #ARGV do
  local fk = 'jobservice:fair:' .. ARGV[i] .. ':'
  if redis.call('LLEN', ARGV[1] .. ARGV[i]) == 0
      and redis.call('EXISTS', fk .. 'index', fk .. 'owners', fk .. 'due') > 0 then
    drop(fk)
    dropped = dropped + 1
  end
end
return dropped
"""
)

# KEYS[1] a queue's index. ARGV: its fair prefix, the rq_id. A cancelled job's fair entries.
FORGET_SCRIPT = (
    _LUA_HELPERS
    + """
local owner = redis.call('HGET', KEYS[1], ARGV[2])
if not owner then return 0 end
redis.call('HDEL', KEYS[1], ARGV[2])
return remove(ARGV[1] .. 'owner:' .. owner, ARGV[2])
"""
)

_scripts: dict[str, Script] = {}


def _run(connection: Redis, source: str, keys: list, args: list):
    """Run a script registered once per process (its SHA; redis-py reloads it on NOSCRIPT)."""
    if source not in _scripts:
        _scripts[source] = connection.register_script(source)
    return _scripts[source](keys=keys, args=args, client=connection)


def drop_idle_state(connection: Redis, queue_names: Iterable[str]) -> int:
    """Drop the fair state of the queues whose RQ list is empty; how many held some. One round trip."""
    return int(_run(connection, DROP_IDLE_SCRIPT, [], [Queue.redis_queue_namespace_prefix, *queue_names]) or 0)


def forget(connection: Redis, queue: str, rq_id: str) -> bool:
    """Remove a cancelled job's fair entries (index, its owner's FIFO); True if it had some."""
    prefix = fair_prefix(queue)
    return bool(_run(connection, FORGET_SCRIPT, [prefix + "index"], [prefix, rq_id]))


class Taken(NamedTuple):
    """A job a worker's take popped: its queue, its RQ id and its RQ hash (as ``hgetall`` answers
    it; empty when the hash is gone)."""

    queue: str
    rq_id: str
    fields: dict


#: What ``FairQueues.take`` answers while ``rq suspend`` holds: nothing was popped.
SUSPENDED = "suspended"


def _hash(flat: list) -> dict:
    """A script's HGETALL reply (field, value, ...) as redis-py's ``hgetall`` gives it."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


class FairQueues:
    """The worker's pop: one atomic script per dequeue (pause-aware; fair when ``fair``)."""

    def __init__(self, connection: Redis, *, fair: bool = True, weights: Mapping[str, int] | None = None):
        self.connection = connection
        self.fair = fair
        self.weights = dict(weights or {})
        self._pop = connection.register_script(POP_SCRIPT)

    def _run_pop(self, keys: list[str], beat: tuple, queue_names: Iterable[str]) -> list:
        names = list(queue_names)
        pairs = [item for owner, weight in self.weights.items() for item in (owner, str(int(weight)))]
        args = ["1" if self.fair else "0", RQJob.redis_job_namespace_prefix, Queue.redis_queue_namespace_prefix]
        args += [*beat, len(names), *names, *pairs, MAX_STALE_PER_POP]
        return self._pop(keys=keys, args=args, client=self.connection)

    def take(self, queue_names: Iterable[str], worker=None) -> tuple[Taken | list[str] | str, bool]:
        """The next job to start of ``queue_names``, in one round trip. What it popped: the job with
        its RQ hash (``Taken``); the open (not paused) queue names when none is ready; or
        ``SUSPENDED`` while ``rq suspend`` holds (nothing popped). With ``worker`` (an RQ worker:
        its keys, ``last_heartbeat``, ``worker_ttl``) the same round trip writes RQ's heartbeat, only
        while its hash exists, and its state idle when nothing is ready; the second value says
        whether it beat. Without one (a read of the order, as the tests take it), neither, and
        ``rq suspend`` is not checked."""
        if worker is None:
            answer = self._run_pop([PAUSED_KEY], ("", ""), queue_names)
        else:
            beat_at = now()
            keys = [PAUSED_KEY, WORKERS_SUSPENDED, worker.key, worker.executions_key]
            answer = self._run_pop(keys, (utcformat(beat_at), worker.worker_ttl + 60), queue_names)
        beat = answer[1] == 1
        if beat:
            worker.last_heartbeat = beat_at  # as RQ's heartbeat notes it
        if answer[0] == 1:
            return Taken(text(answer[2]), text(answer[3]), _hash(answer[4])), beat
        if answer[0] == 2:
            return SUSPENDED, beat
        return [text(name) for name in answer[2:]], beat

    def after_blocking_take(self, queue: str, rq_id: str) -> dict | None:
        """For a job the blocking fallback took: its RQ hash (empty when gone) to start it; None when
        its queue was paused meanwhile or ``rq suspend`` holds (it is back at the FRONT of its list).
        One round trip, two when put back."""
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.sismember(PAUSED_KEY, queue)
            pipe.exists(WORKERS_SUSPENDED)
            pipe.hdel(fair_prefix(queue) + "index", rq_id)  # its FIFO entry goes stale: skipped later
            pipe.hgetall(RQJob.redis_job_namespace_prefix + rq_id)
            paused, suspended, _, fields = pipe.execute()
        if not paused and not suspended:
            return fields
        self.connection.lpush(Queue.redis_queue_namespace_prefix + queue, rq_id)
        return None
