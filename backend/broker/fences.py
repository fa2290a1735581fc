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
A Redis with no history noted at all (new, or emptied: its queues went with it) holds nothing
from an earlier history.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from enum import Enum

from redis import Redis
from redis.commands.core import Script
from redis.exceptions import ResponseError

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


#: One round trip, as the fence's EXISTS alone took: the fence, then (only when there is none)
#: Redis' replication id and the history noted. INFO inside a script, so that the reply is the
#: id alone: cheaper than parsing INFO's section in Python on every job (~30 us more than the
#: EXISTS alone here, against ~70 us for a pipeline of EXISTS, INFO and HMGET).
_CHECK = Script(
    None,
    b"""
if redis.call('EXISTS', KEYS[1]) == 1 then return {1} end
local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')
local noted = redis.call('HMGET', KEYS[2], 'replid', 'since')
return {0, replid or false, noted[1] or false, noted[2] or false}
""",
)


#: The refusal of the script, once seen (logged once per process).
_refused: list[Exception] = []


def start_check(connection: Redis, rq_id: str, created_at: datetime | None) -> StartCheck:
    """The fence's verdict on ``rq_id``, and whether Redis' history can vouch for its absence.

    One round trip; a second one only when a worker meets a new Redis history.

    Raises:
        RedisError: Redis is unreachable or refused.
    """
    try:
        fenced, *history = _CHECK(keys=[fence_key(rq_id), HISTORY_KEY], client=connection)
    except ResponseError as exc:
        # A Redis that refuses scripts or INFO in them: the fence alone, as before (said once).
        if not _refused:
            _refused.append(exc)
            log.warning("Redis refused the start check (%s): a fence a failover loses is not made up for", exc)
        return StartCheck.FENCED if connection.exists(fence_key(rq_id)) else StartCheck.CLEAR
    if fenced:
        return StartCheck.FENCED
    since = _since(connection, *history)
    if since is None:
        return StartCheck.CLEAR
    created = _timestamp(created_at)
    if created is None or created < since + CLOCK_MARGIN_SECONDS:
        return StartCheck.ASK_STORE
    return StartCheck.CLEAR


def _since(connection: Redis, replid: bytes | None, noted: bytes | None, since: bytes | None) -> float | None:
    """When this Redis history began (as first noted), noting it now if it is new; None when
    Redis does not say its replication id: the fence is then trusted."""
    if not replid:
        return None
    if noted == replid:
        try:
            return float(since or 0)
        except ValueError:
            pass
    if noted is None:
        # No history noted: a Redis that never had workers, or one that lost all its data (its
        # queues with it). Nothing in it came from an earlier history: every fence is trusted.
        connection.hset(HISTORY_KEY, mapping={"replid": replid, "since": "0"})
        return 0.0
    # A new history (a failover, a restart from the AOF): the writes just before it may be lost.
    # Several workers may note it at once; a later ``since`` only asks about more jobs.
    now = time.time()
    connection.hset(HISTORY_KEY, mapping={"replid": replid, "since": repr(now)})
    log.warning("Redis has a new history (replication id %s): jobs created before it start once the store agrees",
                replid.decode())  # fmt: skip
    return now


def _timestamp(value: datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
