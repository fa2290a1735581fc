"""Paused queues in Redis: the set workers read before they dequeue, and what ``GET /queues`` shows.

The store records a pause (``backend/store/queue_pauses.py``), so that it survives any restart;
Redis holds its mirror, ``PAUSED_KEY``, a set of queue names, because a worker reads only Redis
(never the store). After the store's commit the API writes the set from the store (``replace``),
and the reconciler's pass does the same, so a Redis that lost its keys gets its pauses back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import WatchError
from rq.queue import Queue
from rq.worker import Worker
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from backend.broker import leases
from backend.broker.replies import text

#: The set of paused queue names (the broker owns the key; workers and the API read it).
PAUSED_KEY = "jobservice:paused-queues"
#: A counter every write of the set bumps, so that a concurrent writer's WATCH always fires.
VERSION_KEY = "jobservice:paused-queues:version"


def paused(connection: Redis) -> frozenset[str]:
    """The paused queues as Redis holds them (one round trip)."""
    return frozenset(text(name) for name in connection.smembers(PAUSED_KEY))


def replace(connection: Redis, recorded: Callable[[], Iterable[str]], *, force: bool = False) -> bool | None:
    """Make the set hold exactly what ``recorded()`` (the store) says; True when it changed it,
    False when it held that already, None when another writer landed meanwhile (the set is then
    left as that writer made it, from a later read of the store).

    The set and ``VERSION_KEY`` are watched from before the store is read, so this older read
    never overwrites a writer's newer one. ``force`` (a pause or resume, after its commit) writes
    even an unchanged set and bumps the version: a writer that read the store before this one's
    commit then fails its EXEC, so the last write to land is always from the latest read (a
    pause committed first but mirrored last would otherwise leave workers obeying it after a
    resume). The reconciler's pass does not force: a write that changes nothing changes no outcome.
    """
    with connection.pipeline(transaction=True) as pipe:
        pipe.watch(PAUSED_KEY, VERSION_KEY)
        held = frozenset(text(name) for name in pipe.smembers(PAUSED_KEY))
        wanted = frozenset(recorded())
        if held == wanted and not force:
            pipe.unwatch()
            return False
        pipe.multi()
        pipe.delete(PAUSED_KEY)
        if wanted:
            pipe.sadd(PAUSED_KEY, *sorted(wanted))
        pipe.incr(VERSION_KEY)  # every write touches a key, even DEL of an absent set
        try:
            pipe.execute()
        except WatchError:
            return None
    return held != wanted


@dataclass(frozen=True)
class QueueState:
    """One queue as Redis sees it: its depth, whether its workers see it paused, and the live
    workers that listen on it."""

    depth: int
    paused: bool
    workers: tuple[str, ...]


def states(connection: Redis, names: Iterable[str]) -> dict[str, QueueState]:
    """Each queue of ``names``: depth, paused in Redis, live workers (two round trips)."""
    names = list(names)
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.llen(f"{Queue.redis_queue_namespace_prefix}{name}")
            pipe.smembers(WORKERS_BY_QUEUE_KEY % name)
        pipe.smembers(PAUSED_KEY)
        answers = pipe.execute()
    held = frozenset(text(name) for name in answers[-1])
    prefix = Worker.redis_worker_namespace_prefix
    listening = {name: {text(key).removeprefix(prefix) for key in answers[2 * i + 1]} for i, name in enumerate(names)}
    # RQ's registration outlives a SIGKILLed worker for minutes; its lease does not.
    alive = leases.alive(connection, {worker for workers in listening.values() for worker in workers})
    return {
        name: QueueState(depth=int(answers[2 * i]), paused=name in held, workers=tuple(sorted(listening[name] & alive)))
        for i, name in enumerate(names)
    }
