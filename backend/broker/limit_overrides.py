"""Rate limits set at run time, in Redis: the hash workers' limiter reads, and the held counts
``GET /rate-limits`` shows.

The store records an override (``backend/store/rate_limit_overrides.py``), so that it survives any
restart; Redis holds its mirror, ``OVERRIDES_KEY`` (key -> limit text), because the limiter's
script runs in Redis and reads it there (backend/broker/key_limits.py). The API writes the hash
after the store's commit, and the reconciler's pass puts it back from the store (``replace``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import WatchError

from backend.broker.key_limits import DUE as DUE_KEY
from backend.broker.key_limits import LIMITS as DECLARED_KEY
from backend.broker.key_limits import OVERRIDES as OVERRIDES_KEY
from backend.broker.key_limits import held_key

#: GET /rate-limits shows at most this many keys that hold jobs (the soonest due first).
MAX_HELD_KEYS = 100


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def read(connection: Redis) -> dict[str, str]:
    """The overrides as Redis holds them (one round trip)."""
    return {_text(key): _text(limit) for key, limit in connection.hgetall(OVERRIDES_KEY).items()}


def put(connection: Redis, key: str, limit: str) -> None:
    """Set ``key``'s override, and make its held jobs due now: the next ``release_due`` of any
    worker releases as many as the new limit allows (one round trip)."""
    with connection.pipeline(transaction=True) as pipe:
        pipe.hset(OVERRIDES_KEY, key, limit)
        pipe.zadd(DUE_KEY, {key: 0}, xx=True)
        pipe.execute()


def remove(connection: Redis, key: str) -> None:
    """Clear ``key``'s override (its jobs go back to the declared limit, which may free slots now)."""
    with connection.pipeline(transaction=True) as pipe:
        pipe.hdel(OVERRIDES_KEY, key)
        pipe.zadd(DUE_KEY, {key: 0}, xx=True)
        pipe.execute()


def replace(connection: Redis, recorded: Callable[[], Mapping[str, str]]) -> bool | None:
    """Make the hash hold exactly what ``recorded()`` (the store) says; True when it changed it,
    False when it held that already, None when a PUT or DELETE landed meanwhile (the hash is then
    left as that writer made it: the next pass looks again).

    The hash is watched from before the store is read, so a writer that changed the store and then
    the hash while this ran is never overwritten by this older read.
    """
    with connection.pipeline(transaction=True) as pipe:
        pipe.watch(OVERRIDES_KEY)
        held = {_text(key): _text(limit) for key, limit in pipe.hgetall(OVERRIDES_KEY).items()}
        wanted = dict(recorded())
        if held == wanted:
            pipe.unwatch()
            return False
        pipe.multi()
        pipe.delete(OVERRIDES_KEY)
        if wanted:
            pipe.hset(OVERRIDES_KEY, mapping=wanted)
        try:
            pipe.execute()
        except WatchError:
            return None
    return True


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
    due = [(_text(key), float(at)) for key, at in connection.zrange(DUE_KEY, 0, most - 1, withscores=True)]
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
        HeldKey(key, int(count), _text(over or said) if (over or said) else None, at)
        for (key, at), count, over, said in zip(due, answers, overridden, declared, strict=True)
    ]
