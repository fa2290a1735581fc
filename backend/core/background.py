"""The periodic thread (``PeriodicThread``): calls a function every few seconds until stopped.

Not the scheduler process (backend/scheduler.py) nor the cron schedules (backend/service/schedules.py):
the API runs its reconciler and webhook dispatcher on these (backend/app.py, ``start_background``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PeriodicThread:
    """A daemon thread calling ``func`` every ``interval`` seconds; one failed pass never ends it.

    ``transient`` errors (a dependency down: the wiring passes the broker's) are logged as a
    warning without a traceback; any other error with its traceback.
    """

    def __init__(
        self,
        name: str,
        func: Callable[[], object],
        interval: float,
        *,
        transient: tuple[type[BaseException], ...] = (),
    ):
        self.name = name
        self.func = func
        self.interval = interval
        self.transient = transient
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.func()
            except self.transient as exc:
                # Which dependency is down is the wiring's business: name the error, not a guess.
                log.warning("%s: a dependency is down (%s: %s); will try again", self.name, type(exc).__name__, exc)
            except Exception:
                log.exception("%s pass failed; will try again", self.name)
            self._stopped.wait(self.interval)
