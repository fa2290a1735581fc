"""Rate limits set at run time, in Redis: the hash workers' limiter reads, and the held counts
``GET /rate-limits`` shows.

The store records an override (``backend/store/rate_limit_overrides.py``), so that it survives any
restart; Redis holds its mirror, ``OVERRIDES_KEY`` (key -> limit text), because the limiter's
script runs in Redis and reads it there (backend/broker/key_limits.py). After the store's commit
the API writes the whole hash from the store (``replace``, watched and retried, as queue pauses
do), and the reconciler's pass does the same, so a Redis that lost its keys gets them back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import WatchError

from backend.broker.key_limits import DUE as DUE_KEY
from backend.broker.key_limits import LIMITS as DECLARED_KEY
from backend.broker.key_limits import OVERRIDES as OVERRIDES_KEY
from backend.broker.key_limits import forget_replaced, held_key
from backend.broker.replies import text

#: A counter every write of the hash bumps, so that a concurrent writer's WATCH always fires.
VERSION_KEY = OVERRIDES_KEY + ":version"

#: GET /rate-limits shows at most this many keys that hold jobs (the soonest due first).
MAX_HELD_KEYS = 100


def read(connection: Redis) -> dict[str, str]:
    """The overrides as Redis holds them (one round trip)."""
    return {text(key): text(limit) for key, limit in connection.hgetall(OVERRIDES_KEY).items()}


def replace(
    connection: Redis, recorded: Callable[[], Mapping[str, str]], *, force: bool = False, wake: str | None = None
) -> bool | None:
    """Make the hash hold exactly what ``recorded()`` (the store) says; True when it changed it,
    False when it held that already, None when another writer landed meanwhile (the hash is then
    left as that writer made it, from a later read of the store).

    The hash and ``VERSION_KEY`` are watched from before the store is read, so this older read
    never overwrites a writer's newer one. ``force`` (a PUT or DELETE, after its commit) writes
    even an unchanged hash and bumps the version: a writer that read the store before this one's
    commit then fails its EXEC, so the last write to land is always from the latest read (of two
    PUTs racing, workers never obey the one the store says was replaced). ``wake``: the key whose
    held jobs become due now, in the same MULTI, so that the next ``release_due`` of any worker
    releases as many as its new limit allows. The reconciler's pass does not force.
    """
    with connection.pipeline(transaction=True) as pipe:
        pipe.watch(OVERRIDES_KEY, VERSION_KEY)
        held = {text(key): text(limit) for key, limit in pipe.hgetall(OVERRIDES_KEY).items()}
        wanted = dict(recorded())
        if held == wanted and not force:
            pipe.unwatch()
            return False
        pipe.multi()
        pipe.delete(OVERRIDES_KEY)
        if wanted:
            pipe.hset(OVERRIDES_KEY, mapping=wanted)
        pipe.incr(VERSION_KEY)  # every write touches a key, even DEL of an absent hash
        if wake is not None:
            # Due at 0 (XX: only a key holding jobs): readers show max(due, now), never 1970.
            pipe.zadd(DUE_KEY, {wake: 0}, xx=True)
            forget_replaced(pipe, wake, held.get(wake), wanted.get(wake))  # its log stops keeping that window
        try:
            pipe.execute()
        except WatchError:
            return None
    return held != wanted


@dataclass(frozen=True)
class HeldKey:
    """A key whose jobs the limiter holds: how many, the limit it holds them to (the override, else
    as declared), and when its next slot frees (seconds since the epoch)."""

    key: str
    held: int
    limit: str | None
    next_slot_at: float


def held_keys(connection: Redis, *, most: int = MAX_HELD_KEYS) -> list[HeldKey]:
    """The keys holding jobs, the soonest due first, at most ``most`` (two round trips)."""
    due = [(text(key), float(at)) for key, at in connection.zrange(DUE_KEY, 0, most - 1, withscores=True)]
    if not due:
        return []
    keys = [key for key, _ in due]
    with connection.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.zcard(held_key(key))
        pipe.hmget(OVERRIDES_KEY, keys)
        pipe.hmget(DECLARED_KEY, keys)
        answers = pipe.execute()
    declared, overridden = answers.pop(), answers.pop()
    return [
        HeldKey(key, int(count), text(over or said) if (over or said) else None, at)
        for (key, at), count, over, said in zip(due, answers, overridden, declared, strict=True)
    ]
