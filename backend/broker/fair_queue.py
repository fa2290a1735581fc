"""Fair share across owners: the submission index beside RQ's lists, and the worker's one-script pop.

RQ's queue lists stay complete (RQ Dashboard, ``rq info``, depths, cancel's LREM and the
reconciler's ``queued_ids`` read them as before). A submission that RQ pushes onto a list now
also writes, in the same MULTI, an index entry (rq_id -> owner), the id at the tail of its
owner's FIFO, and the owner into the queue's owners ZSET (NX, score 0: "new"). The pop script
takes, in the first open non-empty queue, the oldest job of the owner with the lowest virtual
time, and charges that owner 1/weight: a small weighted fair queue whose state is bounded by the
jobs waiting (an empty list drops it). Jobs RQ pushes itself (the scheduler, dependents, RQ's
concurrency promotion, a rate limiter's release) are not indexed: at the head, they go first.
The script reads the paused set itself, so no pop can race a pause (DESIGN15 sections 1 and 2).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from redis import Redis
from redis.client import Pipeline
from rq.job import Job as RQJob
from rq.queue import Queue

from backend.broker.pauses import PAUSED_KEY

#: Stale ids (cancelled, taken by the blocking fallback) one pop drops at most before it takes the
#: head of the list instead: a pop never loops long inside Redis, whatever was cancelled.
MAX_STALE_PER_POP = 100


def fair_prefix(queue: str) -> str:
    """The prefix of one queue's fair state: ``index`` (HASH), ``owners`` (ZSET), ``clock``, ``owner:<o>``."""
    return f"jobservice:fair:{queue}:"


def index_writes(pipe: Pipeline, queue: str, rq_id: str, owner: str) -> None:
    """Queue the index writes of one job RQ is pushing onto ``queue`` now (same MULTI, no round trip)."""
    prefix = fair_prefix(queue)
    pipe.hset(prefix + "index", rq_id, owner)
    pipe.rpush(prefix + "owner:" + owner, rq_id)
    # Score 0 means "new": the pop lifts it to the queue's clock, so a newcomer gets no credit
    # for the time it was away (the clock cannot be read inside a MULTI).
    pipe.zadd(prefix + "owners", {owner: 0}, nx=True)


# KEYS[1] the paused set. ARGV: fair flag ("1"/"0"), RQ's job key prefix, RQ's queue key prefix,
# n, n queue names in priority order, then weight pairs (owner, weight). Returns {1, queue, rq_id},
# or {0, open queue names...} when nothing is ready (the caller blocks on those).
POP_SCRIPT = """
local fair, job_prefix, queue_prefix, n = ARGV[1] == '1', ARGV[2], ARGV[3], tonumber(ARGV[4])
local weights = {}
for i = 5 + n, #ARGV - 1, 2 do weights[ARGV[i]] = tonumber(ARGV[i + 1]) end
-- Drop a queue's fair state (its list is empty, or fair share is off here): nothing else grows.
local function drop(fk)
  if redis.call('EXISTS', fk .. 'owners') == 1 then
    for _, owner in ipairs(redis.call('ZRANGE', fk .. 'owners', 0, -1)) do
      redis.call('DEL', fk .. 'owner:' .. owner)
    end
  end
  redis.call('DEL', fk .. 'owners', fk .. 'index', fk .. 'clock')
end
-- Take one id from a non-empty list: the head when it is not indexed (or fair share is off),
-- else the oldest job of the owner with the lowest virtual time.
local function take(list, fk)
  local head = redis.call('LINDEX', list, 0)
  if not fair then
    drop(fk)  -- an API still indexing (FAIR_SHARE differs): no state kept for it
  elseif redis.call('HEXISTS', fk .. 'index', head) == 1 then
    local clock = tonumber(redis.call('GET', fk .. 'clock') or '0')
    local dropped = 0
    while dropped < tonumber(ARGV[#ARGV]) do
      local top = redis.call('ZRANGE', fk .. 'owners', 0, 0, 'WITHSCORES')
      if #top == 0 then break end
      local owner, fifo = top[1], fk .. 'owner:' .. top[1]
      local id = redis.call('LPOP', fifo)
      if not id then
        redis.call('ZREM', fk .. 'owners', owner)  -- only stale ids were left: not charged
      else
        redis.call('HDEL', fk .. 'index', id)
        -- Stale (cancelled, deleted, already taken): dropped, not charged. LREM is the proof.
        if redis.call('HGET', job_prefix .. id, 'status') == 'queued' and redis.call('LREM', list, 1, id) == 1 then
          local base = math.max(tonumber(top[2]), clock)  -- a new owner starts at the clock
          if redis.call('LLEN', fifo) == 0 then
            redis.call('ZREM', fk .. 'owners', owner)
          else
            redis.call('ZADD', fk .. 'owners', base + 1 / (weights[owner] or 1), owner)
          end
          redis.call('SET', fk .. 'clock', base)
          return id
        end
        dropped = dropped + 1
      end
    end
  end
  -- Not indexed, fair share off, or too many stale ids at once: the head, FIFO.
  redis.call('LPOP', list)
  redis.call('HDEL', fk .. 'index', head)
  return head
end
local open = {}
for i = 5, 4 + n do
  local name = ARGV[i]
  if redis.call('SISMEMBER', KEYS[1], name) == 0 then  -- paused: skipped, read atomically
    open[#open + 1] = name
    local list, fk = queue_prefix .. name, 'jobservice:fair:' .. name .. ':'
    if redis.call('LLEN', list) > 0 then
      return {1, name, take(list, fk)}
    end
    drop(fk)  -- an empty list: whatever fair state is left is stale (no growth)
  end
end
return {0, unpack(open)}
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class FairQueues:
    """The worker's pop: one atomic script per dequeue (pause-aware; fair when ``fair``)."""

    def __init__(self, connection: Redis, *, fair: bool = True, weights: Mapping[str, int] | None = None):
        self.connection = connection
        self.fair = fair
        self.weights = dict(weights or {})
        self._pop = connection.register_script(POP_SCRIPT)

    def pop(self, queue_names: Iterable[str], weights: Mapping[str, int] | None = None) -> tuple[str, str] | list[str]:
        """(queue, rq_id) of the job to start, or the open (not paused) queue names when none is ready.

        ``weights`` overrides this instance's (owner -> positive int; absent owners weigh 1).
        """
        names = list(queue_names)
        pairs = [item for owner, weight in (weights or self.weights).items() for item in (owner, str(int(weight)))]
        args = ["1" if self.fair else "0", RQJob.redis_job_namespace_prefix, Queue.redis_queue_namespace_prefix]
        answer = self._pop(
            keys=[PAUSED_KEY], args=[*args, len(names), *names, *pairs, MAX_STALE_PER_POP], client=self.connection
        )
        if answer[0] == 1:
            return _text(answer[1]), _text(answer[2])
        return [_text(name) for name in answer[1:]]

    def after_blocking_pop(self, queue: str, rq_id: str) -> bool:
        """For a job the blocking fallback took: True to start it; False when its queue was paused
        meanwhile (it is back at the FRONT of its list). One round trip, two when paused."""
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.sismember(PAUSED_KEY, queue)
            pipe.hdel(fair_prefix(queue) + "index", rq_id)  # its FIFO entry goes stale: skipped later
            paused, _ = pipe.execute()
        if not paused:
            return True
        self.connection.lpush(Queue.redis_queue_namespace_prefix + queue, rq_id)
        return False
