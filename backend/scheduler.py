"""The scheduler process: fires due cron schedules every few seconds.

    python backend/scheduler.py

Any number may run (on one host or many): each due time of a schedule fires exactly once, since
a firing is a row whose (schedule, due time) is unique in the store, so nothing here needs a
Redis key or a leader (a Redis that is down only leaves the fired job PENDING, for the
reconciler to enqueue). "Due" is judged by the store's clock (``ScheduleManager.now``):
schedulers on hosts whose clocks differ fire a schedule at the same instant. The schedules
themselves (cron checks, firing exactly once) are the service's (``ScheduleManager.fire_due``
in backend/service/schedules.py); this process only calls it.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python backend/scheduler.py`: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import logging  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402

#: Set by SIGTERM or SIGINT. Run as a process, the handlers go in before the imports below and
#: the store's migration, so a stop that comes while it is still starting (a rolling update,
#: ``docker stop``) ends it cleanly once started, instead of killing it with the signal.
STOP = threading.Event()
if __name__ == "__main__":
    for _signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(_signum, lambda *_: STOP.set())
from collections.abc import Callable  # noqa: E402
from datetime import datetime  # noqa: E402

from backend.broker.errors import BrokerError  # noqa: E402
from backend.core import logs, secrets_check  # noqa: E402
from backend.core.settings import Settings  # noqa: E402
from backend.service.schedules import ScheduleManager  # noqa: E402
from backend.services import build_services  # noqa: E402
from backend.store.errors import StoreUnavailable  # noqa: E402

log = logging.getLogger("backend.scheduler")


class Scheduler:
    """Fires due schedules every ``interval`` seconds, due by the store's clock; tests may pass ``clock``."""

    def __init__(self, schedules: ScheduleManager, *, interval: float, clock: Callable[[], datetime] | None = None):
        self.schedules = schedules
        self.interval = interval
        self.clock = clock
        self.stopped = threading.Event()

    def tick(self) -> int:
        """One pass; returns how many jobs it started."""
        return len(self.schedules.fire_due(self.clock() if self.clock is not None else None))

    def run(self) -> None:
        log.info("scheduler started (every %.1f s)", self.interval)
        while not self.stopped.is_set():
            try:
                self.tick()
            except (BrokerError, *StoreUnavailable) as exc:
                log.warning("scheduler: a dependency is down (%s); will try again", exc)
            except Exception:
                log.exception("scheduler pass failed; will try again")
            self.stopped.wait(self.interval)
        log.info("scheduler stopped")


def main() -> int:
    settings = Settings.load()
    logs.configure(fmt=settings.log_format, level=settings.log_level)
    secrets_check.enforce_or_exit(settings, role="scheduler")
    services = build_services(settings)
    scheduler = Scheduler(services.schedules, interval=settings.scheduler_interval)
    scheduler.stopped = STOP
    for signum in (signal.SIGTERM, signal.SIGINT):  # (again, for a main() called some other way)
        signal.signal(signum, lambda *_: STOP.set())
    scheduler.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
