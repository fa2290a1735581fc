"""The functions both sides run: plain top-level functions with no import of ``backend``.

Raw RQ workers import them as ``bench.rawtasks.<name>``; ``bench.tasks`` registers the very
same functions as tasks of the service, so both sides execute identical code.
"""

from __future__ import annotations

import os
import time

_redis = None


def noop() -> None:
    """Do nothing."""
    return None


def stamp(key: str = "bench:stamps") -> float:
    """Record when the task started (``time.time()``) on the Redis list ``key``; return it."""
    started = time.time()
    global _redis
    if _redis is None:
        from redis import Redis

        _redis = Redis.from_url(os.environ["BENCH_REDIS_URL"])
    _redis.rpush(key, repr(started))
    return started
