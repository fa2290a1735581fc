"""What RQ knows about why a job waits: live workers per queue, concurrency slots, queue places,
the jobs the rate limiter holds.

The service decides a job's ``waiting_reason`` from its row plus these facts. They are read
cheaply: a ``snapshot`` (live workers per queue, paused queues, each limited task's slots) costs two round
trips and is kept for ``ttl`` seconds per process, so a list of any length and every poll in
that second share it; a job's ``place`` (its position in its queue and whether RQ's
concurrency limit holds it back) is one pipelined round trip, for a single-job GET only.

Redis unreachable: both answer None at once for ``DOWN_SECONDS`` after a failure (no caller
waits for a connect timeout on every request), and the caller falls back to what the row says.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job as RQJob
from rq.queue import Queue
from rq.rate_limit import RateLimitRegistry
from rq.worker import Worker
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from backend.broker import key_limits, leases
from backend.broker.errors import BrokerUnreachable
from backend.broker.fair_queue import fair_prefix
from backend.broker.pauses import PAUSED_KEY
from backend.broker.replies import text
from backend.core.settings import QUEUE_NAMES

log = logging.getLogger(__name__)

#: A queue position is looked for among this many entries from the head (LPOS ... MAXLEN), so
#: a read never scans a long queue; further back, the position is unknown (None).
POSITION_SCAN = 10_000
#: At most this many holders of a task's slots are read into a snapshot (a limit is small).
MAX_HOLDERS = 1_000
#: A fair-share position reads at most this many owners of the queue (the lowest virtual times:
#: those whose jobs go first); past them the estimate leaves the rest out.
MAX_FAIR_OWNERS = 200


def task_limit_key(task: str) -> str:
    """The key of RQ's concurrency limit shared by every job of ``task`` (``RateLimit(key=...)``)."""
    return f"jobservice:task:{task}"


@dataclass(frozen=True)
class TaskSlots:
    """One limited task's slots in RQ: how many are held (its jobs queued or running past the
    limiter), how many of its jobs the limiter holds back, and the RQ ids holding slots."""

    held: int
    held_back: int
    holders: frozenset[str]


@dataclass(frozen=True)
class QueueFacts:
    """A snapshot: live workers listening on each queue, and the slots of each limited task."""

    workers: Mapping[str, int]
    slots: Mapping[str, TaskSlots]
    #: The queues paused in Redis (what workers obey: backend/broker/pauses.py).
    paused: frozenset[str] = frozenset()
    #: Rate limits set at run time, key -> limit text (few: an admin sets them).
    overrides: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HeldPlace:
    """A job the rate limiter holds: its key, when the key's next slot frees (never before now),
    how many held jobs of the key go before it, and when its own turn comes at the key's current
    limit (an estimate: the next slot plus one window per ``limit`` jobs ahead). Times are epoch
    seconds of Redis's clock, the limiter's; None when the key's next slot is not known."""

    key: str
    next_slot: float | None
    ahead: int = 0
    resumes_at: float | None = None


@dataclass(frozen=True)
class JobPlace:
    """One RQ job's place: its 1-based position in its queue (None: not within ``POSITION_SCAN``
    of the head, or not on the list), and, for a limited task, whether the limiter holds it
    back and how many slots are held."""

    position: int | None
    held_back: bool = False
    held: int = 0
    #: When its task's rate limiter holds it (in no queue list): where it stands there.
    rate_held: HeldPlace | None = None
    #: Under fair share (its job is in its queue's fair index): how many owners have jobs waiting
    #: on the queue; ``position`` is then an estimate of when the fair pop takes it, not its
    #: place in RQ's list. None: first come, first served (``position`` is the list's).
    fair_owners: int | None = None


class WaitingFacts:
    """Reads the facts above from Redis; the snapshot is cached per process for ``ttl`` seconds."""

    #: After Redis failed to answer, calls answer None without a round trip for this long.
    DOWN_SECONDS = 2.0

    def __init__(self, connection: Redis, *, ttl: float = 1.0):
        self.connection = connection
        self.ttl = ttl
        self._lock = threading.Lock()
        self._cached: tuple[float, tuple[str, ...], QueueFacts] | None = None
        self._down_until = 0.0
        self._limits: dict[str, RateLimitRegistry] = {}

    def snapshot(self, tasks: Iterable[str]) -> QueueFacts | None:
        """Live workers per queue and the slots of ``tasks`` (those with a concurrency limit),
        at most ``ttl`` seconds old; None while Redis does not answer."""
        key = tuple(sorted(set(tasks)))
        cached = self._cached
        if cached is not None and cached[1] == key and time.monotonic() - cached[0] < self.ttl:
            return cached[2]
        if not self._lock.acquire(blocking=cached is None):
            # Another thread is refreshing it: the facts of a moment ago will do meanwhile.
            return cached[2] if cached[1] == key else None
        try:
            cached = self._cached
            if cached is not None and cached[1] == key and time.monotonic() - cached[0] < self.ttl:
                return cached[2]
            facts = self._guarded(lambda: self._read_snapshot(key))
            if facts is not None:
                self._cached = (time.monotonic(), key, facts)
            return facts
        finally:
            self._lock.release()

    def place(self, rq_id: str, queue: str, *, task: str | None, rate_limited: bool = False) -> JobPlace | None:
        """Where the RQ job ``rq_id`` waits on ``queue``; ``task``: its task when that has a
        concurrency limit (else None); ``rate_limited``: its task has a rate limit, so a job not on
        the list may be held by the limiter (then a second round trip asks). One round trip
        otherwise; None while Redis does not answer."""
        place = self._guarded(lambda: self._read_place(rq_id, queue, task))
        if place is None or place.position is not None or not rate_limited:
            return place
        held = self.held_until([rq_id])
        return place if not held else replace(place, rate_held=held[rq_id])

    def held_until(self, rq_ids: Iterable[str]) -> dict[str, HeldPlace] | None:
        """Of ``rq_ids``, those the rate limiter holds, each with its own turn (``HeldPlace``).
        One round trip for all of them (a page's: one script, a ZRANK per id inside it); None
        while Redis does not answer."""
        ids = list(rq_ids)
        if not ids:
            return {}
        return self._guarded(lambda: held_places(self.connection, ids))

    def _guarded(self, read):
        if time.monotonic() < self._down_until:
            return None
        try:
            return read()
        except BrokerUnreachable as exc:
            self._down_until = time.monotonic() + self.DOWN_SECONDS
            log.warning("waiting reasons without Redis's facts for %.0f s: %s", self.DOWN_SECONDS, exc)
        except RedisError as exc:  # a refusal (a key of the wrong type): this read only
            log.warning("waiting reasons without Redis's facts: %s", exc)
        return None

    def _limit(self, task: str) -> RateLimitRegistry:
        registry = self._limits.get(task)
        if registry is None:
            # Keys only: building it sends nothing to Redis.
            registry = self._limits[task] = RateLimitRegistry(task_limit_key(task), self.connection)
        return registry

    def _read_snapshot(self, tasks: tuple[str, ...]) -> QueueFacts:
        with self.connection.pipeline(transaction=False) as pipe:
            for name in QUEUE_NAMES:
                pipe.smembers(WORKERS_BY_QUEUE_KEY % name)
            for task in tasks:
                limit = self._limit(task)
                pipe.zcard(limit.allowed_key)
                pipe.zcard(limit.rate_limited_key)
                pipe.zrange(limit.allowed_key, 0, MAX_HOLDERS - 1)
            pipe.smembers(PAUSED_KEY)  # in the same round trip
            pipe.hgetall(key_limits.OVERRIDES)
            answers = pipe.execute()
        overrides = {text(key): text(limit) for key, limit in answers.pop().items()}
        paused = frozenset(text(name) for name in answers.pop())
        prefix = Worker.redis_worker_namespace_prefix
        listening = {
            name: {text(key).removeprefix(prefix) for key in members}
            for name, members in zip(QUEUE_NAMES, answers, strict=False)
        }
        # RQ's registration outlives a SIGKILLed worker for minutes; its lease does not.
        alive = leases.alive(self.connection, {worker for names in listening.values() for worker in names})
        slots = {}
        rest = answers[len(QUEUE_NAMES) :]
        for i, task in enumerate(tasks):
            held, held_back, holders = rest[3 * i : 3 * i + 3]
            slots[task] = TaskSlots(int(held), int(held_back), frozenset(text(h) for h in holders))
        workers = {name: len(names & alive) for name, names in listening.items()}
        return QueueFacts(workers=workers, slots=slots, paused=paused, overrides=overrides)

    def _read_place(self, rq_id: str, queue: str, task: str | None) -> JobPlace:
        place = _script(self.connection, _FAIR_PLACE)
        keys = [f"{Queue.redis_queue_namespace_prefix}{queue}", fair_prefix(queue), key_limits.HELD_JOBS]
        args = [rq_id, POSITION_SCAN, MAX_FAIR_OWNERS, RQJob.redis_job_namespace_prefix]
        if task is None:  # one script call: no pipeline to build (the common case, and a poll's)
            return _place(place(keys=keys, args=args, client=self.connection))
        with self.connection.pipeline(transaction=False) as pipe:
            place(keys=keys, args=args, client=pipe)
            limit = self._limit(task)
            pipe.zscore(limit.rate_limited_key, rq_id)
            pipe.zcard(limit.allowed_key)
            found, held_back, held = pipe.execute()
        return replace(_place(found), held_back=held_back is not None, held=int(held))


def _place(found: list) -> JobPlace:
    index, owners = int(found[0]), int(found[1])
    return JobPlace(None if index < 0 else index + 1, fair_owners=None if owners < 0 else owners)


# KEYS: the queue's RQ list, its fair prefix (backend/broker/fair_queue.py), the rate limiter's
# held jobs. ARGV: rq id, scan, owners read at most, RQ's job key prefix. Returns {place, owners}:
# {-1, -1} when the job is not seen waiting within ``scan``; a job outside the fair index: its
# 0-based index in RQ's list and -1; a job in it: how many jobs the fair pop takes before it (read
# from its owner's FIFO and the other owners' virtual times and backlogs, the way the pop picks:
# lowest time, ties by name; equal weights assumed, OWNER_WEIGHTS is the workers') and how many
# owners have jobs waiting.
_FAIR_PLACE = """
local id, scan = ARGV[1], tonumber(ARGV[2])
local fk = KEYS[2]
local index = redis.call('LPOS', KEYS[1], id, 'MAXLEN', scan)
local owner = redis.call('HGET', fk .. 'index', id)
local rank = owner and redis.call('LPOS', fk .. 'owner:' .. owner, id, 'MAXLEN', scan)
-- Not near the list's head: still waiting there when queued and not held by the rate limiter (a
-- held job, or one a blocking pop took, may keep a stale index entry).
if not index and (not rank or redis.call('HGET', ARGV[4] .. id, 'status') ~= 'queued'
    or redis.call('HEXISTS', KEYS[3], id) == 1) then
  return {-1, -1}
end
if not rank then return {index, -1} end  -- not indexed: first come, first served
local clock = tonumber(redis.call('GET', fk .. 'clock') or '0')
local mine = math.max(tonumber(redis.call('ZSCORE', fk .. 'owners', owner) or '0'), clock)
local turn = mine + rank  -- the virtual time at which the pop takes this job
local ahead, waiting = rank, 0
local others = redis.call('ZRANGE', fk .. 'owners', 0, tonumber(ARGV[3]) - 1, 'WITHSCORES')
for i = 1, #others, 2 do
  local backlog = redis.call('LLEN', fk .. 'owner:' .. others[i])
  if backlog > 0 then waiting = waiting + 1 end
  if others[i] ~= owner and backlog > 0 then
    local gap = turn - math.max(tonumber(others[i + 1]), clock)
    local before = math.ceil(gap)  -- its jobs whose time is below this job's
    if gap == math.floor(gap) and others[i] < owner then before = gap + 1 end  -- a tie goes by name
    ahead = ahead + math.min(backlog, math.max(0, before))
  end
end
return {ahead, waiting}
"""

# KEYS: held-jobs, due, overrides, declared limits. ARGV: the key prefix, then RQ ids. Returns
# (id, key, next slot or '', jobs of the key ahead, its turn or '') for each id held. The limiter's
# own grammar and clock (its prelude): the estimate reads a key's limit exactly as release_due does.
_HELD_PLACES = (
    key_limits._PRELUDE
    + """
local now = clock('')
local out = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local key = redis.call('HGET', KEYS[1], id)
  if key then
    local due = tonumber(redis.call('ZSCORE', KEYS[2], key))
    -- A key woken by an override (due 0) or overdue frees its slot at the next release: now.
    if due then due = math.max(due, now) end
    local ahead = redis.call('ZRANK', ARGV[1] .. key .. ':held', id) or 0
    local count, window = parse(redis.call('HGET', KEYS[3], key))
    if not count then count, window = parse(redis.call('HGET', KEYS[4], key)) end
    local turn = ''
    if due and count then turn = string.format('%.6f', due + math.floor(ahead / count) * window) end
    table.insert(out, id)
    table.insert(out, key)
    table.insert(out, due and string.format('%.6f', due) or '')
    table.insert(out, ahead)
    table.insert(out, turn)
  end
end
return out
"""
)


def held_places(connection: Redis, rq_ids: list[str]) -> dict[str, HeldPlace]:
    """Of ``rq_ids``, those the rate limiter holds, with their own turns (one round trip)."""
    keys = [key_limits.HELD_JOBS, key_limits.DUE, key_limits.OVERRIDES, key_limits.LIMITS]
    flat = _script(connection, _HELD_PLACES)(keys=keys, args=[key_limits.PREFIX, *rq_ids], client=connection)
    found = {}
    for index in range(0, len(flat), 5):
        rq_id, key, due, ahead, turn = (text(value) for value in flat[index : index + 5])
        next_slot = float(due) if due else None
        found[rq_id] = HeldPlace(key, next_slot, int(ahead), float(turn) if turn else next_slot)
    return found


_scripts: dict[str, object] = {}


def _script(connection: Redis, source: str):
    """Registered once per process (EVALSHA; redis-py loads it again on a NOSCRIPT)."""
    script = _scripts.get(source)
    if script is None:
        script = _scripts[source] = connection.register_script(source)
    return script
