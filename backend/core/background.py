"""A daemon thread that calls a function every few seconds until stopped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class PeriodicThread:
    def __init__(self, name: str, func: Callable[[], object], interval: float):
        self.name = name
        self.func = func
        self.interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.func()
            except RedisError as exc:
                log.warning("%s: Redis unavailable (%s); will try again", self.name, exc)
            except Exception:
                log.exception("%s pass failed; will try again", self.name)
            self._stopped.wait(self.interval)
