"""Whether a worker may trust a missing cancel fence, or must ask the store.

A fence (``queues.fence_key``) is written when an attempt is cancelled or replaced. A Redis
failover (asynchronous replication) or a restart from an older AOF/RDB loses the last writes:
a fence written just before it is gone while the queue entry it guarded is back, and the
worker would start a cancelled attempt. Redis itself says when its data may have lost writes:
its replication id (``INFO replication`` ``master_replid``) is new after every promotion and
every restart. So the first worker that meets a new id notes the moment in ``HISTORY_KEY``, and
a missing fence is trusted only for RQ jobs created after that moment (their fences, if any,
were written to this history); for older ones the store, the record, decides (the worker's
start report is answered before the task runs). Without a failover nothing more is asked.
A Redis with no history noted is trusted only when it holds no RQ queues either (new, or
emptied): one restored from a snapshot older than the first note still has its queues.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import UTC, datetime
from enum import Enum

from redis import Redis
from redis.commands.core import Script
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError, TryAgainError
from rq import Queue

from backend.broker.queues import fence_key

log = logging.getLogger(__name__)

#: A hash: ``replid`` (Redis' replication id when it was noted) and ``since`` (Unix time).
HISTORY_KEY = "jobservice:history"
#: RQ's ``created_at`` is the enqueuing host's clock, ``since`` the noting worker's: jobs created
#: this long after ``since`` are asked about too, so that clocks that differ cannot hide one.
CLOCK_MARGIN_SECONDS = 30.0


class StartCheck(Enum):
    """What a worker does with an RQ job it took: run it, refuse it, or ask the store first."""

    CLEAR = "clear"
    FENCED = "fenced"
    ASK_STORE = "ask_store"


#: One round trip, as the fence's EXISTS alone took (none of its own when queued on the worker's
#: MULTI as a job starts, ``queue_start_check``): the fence, then (only when there is none)
#: Redis' replication id and the history noted, noted anew in the same script when the id is new.
#: INFO inside a script, so that the reply is the id alone: cheaper than parsing INFO's section in
#: Python on every job (~30 us more than the EXISTS alone here, against ~70 us for a pipeline of
#: EXISTS, INFO and HMGET). Noting in the script makes it one write however many workers meet the
#: new id at once. Reply: {1} fenced, or {0, since or false, the id when noted just now}.
_CHECK = Script(
    None,
    b"""
if KEYS[1] ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then return {1} end
local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')
if not replid then return {0, false} end
local noted = redis.call('HMGET', KEYS[2], 'replid', 'since')
if noted[1] == replid then return {0, noted[2] or '0'} end
local since = ARGV[1]
if not noted[1] and redis.call('EXISTS', KEYS[3]) == 0 then since = '0' end
redis.call('HSET', KEYS[2], 'replid', replid, 'since', since)
return {0, since, replid}
""",
)


#: The refusal of the script, once seen (logged once per process).
_refused: list[Exception] = []


def start_check(connection: Redis, rq_id: str, created_at: datetime | None) -> StartCheck:
    """The fence's verdict on ``rq_id``, and whether Redis' history can vouch for its absence.

    One round trip, also when it notes a new Redis history.

    Raises:
        RedisError: Redis is unreachable or refused.
    """
    try:
        fenced, *history = _run(connection, fence_key(rq_id))
    except ResponseError as exc:
        # A Redis that refuses scripts or INFO in them: the fence alone, as before (said once).
        # A refusal that passes (Redis full, busy, read-only for a moment): the fence alone for
        # this job only, the script again for the next.
        if _passing(exc):
            log.warning("Redis refused the start check for now (%s): the fence alone for job %s", exc, rq_id)
        elif not _refused:
            _refused.append(exc)
            log.warning("Redis refused the start check (%s): a fence a failover loses is not made up for", exc)
        return StartCheck.FENCED if connection.exists(fence_key(rq_id)) else StartCheck.CLEAR
    return _verdict(fenced, history, created_at)


#: Refusals of the moment, by the codes Redis begins them with (those redis-py names have classes).
_PASSING_CODES = ("BUSY", "MASTERDOWN", "NOREPLICAS", "MISCONF")


def _passing(exc: ResponseError) -> bool:
    """Whether Redis refused the script for now (full, busy, read-only, not in sync), not for good."""
    return isinstance(exc, (OutOfMemoryError, ReadOnlyError, TryAgainError)) or str(exc).startswith(_PASSING_CODES)


def scripts_refused() -> bool:
    """Whether this Redis refused the start check's script (then it is not queued on pipelines)."""
    return bool(_refused)


def queue_start_check(pipeline, rq_id: str) -> None:
    """Queue the start check of ``rq_id`` on ``pipeline`` (the worker's MULTI of RQ's own writes as
    a job starts): no round trip of its own. ``start_check_from`` reads its reply."""
    keys = [fence_key(rq_id), HISTORY_KEY, Queue.redis_queues_keys]
    # EVALSHA by hand: a Script on a pipeline costs a SCRIPT EXISTS round trip before every send.
    pipeline.execute_command("EVALSHA", _CHECK.sha, len(keys), *keys, repr(time.time()))


def start_check_from(connection: Redis, reply: object, rq_id: str, created_at: datetime | None) -> StartCheck:
    """The verdict of a start check queued by ``queue_start_check``, from its reply in the pipeline.

    A reply that is an error (the script not loaded in this Redis yet, NOSCRIPT; or refused) makes
    the check on its own, as ``start_check`` (which loads the script for the next ones).

    Raises:
        RedisError: Redis is unreachable or refused.
    """
    if isinstance(reply, Exception):
        return start_check(connection, rq_id, created_at)
    fenced, *history = reply
    return _verdict(fenced, history, created_at)


def _verdict(fenced: int, history: list, created_at: datetime | None) -> StartCheck:
    if fenced:
        return StartCheck.FENCED
    since = _since(*history)
    if since is None:
        return StartCheck.CLEAR
    created = _timestamp(created_at)
    if created is None or created < since + CLOCK_MARGIN_SECONDS:
        return StartCheck.ASK_STORE
    return StartCheck.CLEAR


def note_history(connection: Redis) -> None:
    """Note Redis' current history now if it is new (the API and a worker at start), so that its
    beginning is not noted later, at the first job a worker takes.

    Raises:
        RedisError: Redis is unreachable or refused (scripts or INFO refused: nothing noted).
    """
    with contextlib.suppress(ResponseError):  # the start check says so, once, at the first job
        _since(*_run(connection, "")[1:])


def _run(connection: Redis, fence: str) -> list:
    # The replication id's history starts now, or (a Redis with no history noted and no RQ
    # queues: new, or emptied) at 0, since nothing in it comes from an earlier history.
    keys = [fence, HISTORY_KEY, Queue.redis_queues_keys]
    return _CHECK(keys=keys, args=[repr(time.time())], client=connection)


def _since(since: bytes | None = None, noted: bytes | None = None) -> float | None:
    """When this Redis history began, as noted; None when Redis does not say its replication id
    (the fence is then trusted)."""
    if since is None:
        return None
    try:
        value = float(since)
    except ValueError:
        return time.time()  # a garbled note: ask about every job until it is noted again
    if noted and value:
        # A new history (a failover, a restart from a snapshot, a Redis with RQ's queues and no
        # note): the writes just before it may be lost.
        log.warning("Redis has a new history (replication id %s): jobs created before it start once the store "
                    "agrees", noted.decode())  # fmt: skip
    return value


def _timestamp(value: datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
