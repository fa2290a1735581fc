"""Paused queues in Redis: the set workers read before they dequeue, and what ``GET /queues`` shows.

The store records a pause (``backend/store/queue_pauses.py``), so that it survives any restart;
Redis holds its mirror, ``PAUSED_KEY``, a set of queue names, because a worker reads only Redis
(never the store). The API writes the set after the store's commit, and the reconciler's pass
puts it back from the store (``replace``), so a Redis that lost its keys gets its pauses back.
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

#: The set of paused queue names (the broker owns the key; workers and the API read it).
PAUSED_KEY = "jobservice:paused-queues"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def paused(connection: Redis) -> frozenset[str]:
    """The paused queues as Redis holds them (one round trip)."""
    return frozenset(_text(name) for name in connection.smembers(PAUSED_KEY))


def add(connection: Redis, queue: str) -> None:
    connection.sadd(PAUSED_KEY, queue)


def remove(connection: Redis, queue: str) -> None:
    connection.srem(PAUSED_KEY, queue)


def replace(connection: Redis, recorded: Callable[[], Iterable[str]]) -> bool | None:
    """Make the set hold exactly what ``recorded()`` (the store) says; True when it changed it,
    False when it held that already, None when a pause or resume landed meanwhile (the set is
    then left as that writer made it: the next pass looks again).

    The set is watched from before the store is read, so a writer that changed the store and
    then the set while this ran is never overwritten by this older read.
    """
    with connection.pipeline(transaction=True) as pipe:
        pipe.watch(PAUSED_KEY)
        held = frozenset(_text(name) for name in pipe.smembers(PAUSED_KEY))
        wanted = frozenset(recorded())
        if held == wanted:
            pipe.unwatch()
            return False
        pipe.multi()
        pipe.delete(PAUSED_KEY)
        if wanted:
            pipe.sadd(PAUSED_KEY, *sorted(wanted))
        try:
            pipe.execute()
        except WatchError:
            return None
    return True


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
    held = frozenset(_text(name) for name in answers[-1])
    prefix = Worker.redis_worker_namespace_prefix
    listening = {name: {_text(key).removeprefix(prefix) for key in answers[2 * i + 1]} for i, name in enumerate(names)}
    # RQ's registration outlives a SIGKILLed worker for minutes; its lease does not.
    alive = leases.alive(connection, {worker for workers in listening.values() for worker in workers})
    return {
        name: QueueState(depth=int(answers[2 * i]), paused=name in held, workers=tuple(sorted(listening[name] & alive)))
        for i, name in enumerate(names)
    }
