"""Tasks of tests/test_horse_handover.py: a task that ends its own process with a chosen exit status."""

from __future__ import annotations

import contextlib
import os

from redis import Redis
from redis.exceptions import RedisError

from backend.tasks import task


@task("exit_with")
def exit_with(code: int, kill_redis: str | None = None) -> None:
    """End this process at once with ``code`` (a C library's ``exit(3)``, a task's ``os._exit``);
    ``kill_redis``: a marker file; the first run saves Redis and shuts it down first (a failover
    at that moment), later runs (the marker exists) only exit."""
    if kill_redis and not os.path.exists(kill_redis):
        open(kill_redis, "w").close()  # noqa: SIM115
        with contextlib.suppress(RedisError):
            Redis.from_url(os.environ["REDIS_URL"]).shutdown(save=True)
    os._exit(code)
