"""Housekeeping: the store's periodic upkeep (retention, the per-minute history), one process at a time.

Runs in the API process's periodic thread "housekeeping" (every HOUSEKEEPING_INTERVAL seconds).
A Redis lock lets one process of the fleet do it; every step is idempotent, so two at once (a lock
lost in a failover) would only repeat work. Each step has its own try: one that fails (its table
missing, a store hiccup) never keeps the others from running.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from backend.broker import leases

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

    def add(self, name: str, step: Callable[[], object]) -> None:
        self.steps.append((name, step))

    def run_once(self) -> dict[str, object] | None:
        """One pass of every step; None when another process holds the lock."""
        if not self.steps:
            return {}
        with leases.exclusive(self.connection, LOCK_KEY, token=self._token, seconds=LOCK_SECONDS) as held:
            if held is None:
                return None
            done: dict[str, object] = {}
            for name, step in self.steps:
                if not held.holds():
                    break
                try:
                    done[name] = step()
                except Exception as exc:  # the next step and the next pass go on
                    log.warning("housekeeping: %s failed (%s: %s)", name, type(exc).__name__, exc)
            return done
