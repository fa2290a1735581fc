"""Housekeeping: the store's periodic upkeep (retention, the per-minute history), one process at a time.

Runs in the API process's periodic thread "housekeeping" (every HOUSEKEEPING_INTERVAL seconds).
A Redis lock lets one process of the fleet do it; every step is idempotent, so two at once (a lock
lost in a failover) would only repeat work. Each step has its own try: one that fails (its table
missing, a store hiccup) never keeps the others from running. While Redis is unreachable no lock
can be taken, and the steps that need only the store (retention, the history's roll-up and prune)
run anyway, in every process: being idempotent, they would only repeat work, where waiting would
let the store grow for as long as Redis is away. The steps that need Redis wait for it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from backend.broker import leases
from backend.broker.errors import BrokerUnreachable

log = logging.getLogger(__name__)

#: The Redis lock that elects the one process doing a pass.
LOCK_KEY = "jobservice:housekeeping:lock"
#: Seconds the lock lives without renewal (a pass renews it while it runs).
LOCK_SECONDS = 60.0


class Housekeeping:
    """Runs the registered steps once per pass, under the fleet-wide lock."""

    def __init__(self, connection):  # the broker's Redis connection (Services.redis)
        self.connection = connection
        self._token = uuid.uuid4().hex
        #: (name, step) in order; a step takes no argument and returns what it did (logged).
        self.steps: list[tuple[str, Callable[[], object]]] = []
        #: The names of the steps that need Redis: they wait while it is unreachable.
        self.needs_redis: set[str] = set()
        self._unreachable = False

    def add(self, name: str, step: Callable[[], object], *, needs_redis: bool = False) -> None:
        """Register ``step``; ``needs_redis``: it is skipped while Redis is unreachable."""
        self.steps.append((name, step))
        if needs_redis:
            self.needs_redis.add(name)

    def run_once(self) -> dict[str, object] | None:
        """One pass of every step; None when another process holds the lock."""
        if not self.steps:
            return {}
        try:
            with leases.exclusive(self.connection, LOCK_KEY, token=self._token, seconds=LOCK_SECONDS) as held:
                if self._unreachable:
                    log.info("housekeeping: Redis is back; the pass runs under its lock again")
                    self._unreachable = False
                if held is None:
                    return None
                return self._run(held.holds, with_redis=True)
        except BrokerUnreachable as exc:
            # Only the lock is missing: the store-only steps go on (see the module's docstring).
            if not self._unreachable:
                log.warning("housekeeping: Redis unreachable (%s); the store-only steps run without the lock", exc)
                self._unreachable = True
            return self._run(lambda: True, with_redis=False)

    def _run(self, holds: Callable[[], bool], *, with_redis: bool) -> dict[str, object]:
        done: dict[str, object] = {}
        for name, step in self.steps:
            if name in self.needs_redis and not with_redis:
                continue
            if not holds():
                break
            try:
                done[name] = step()
            except Exception as exc:  # the next step and the next pass go on
                log.warning("housekeeping: %s failed (%s: %s)", name, type(exc).__name__, exc)
        return done
