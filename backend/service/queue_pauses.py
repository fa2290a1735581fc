"""Pausing and resuming queues, and the overview of ``GET /queues``.

A pause is recorded in the store first (the record every restart keeps), then Redis's set, which
workers read at each dequeue, is written from the store as it stands after that commit (so of
two commands racing, the one committed last is what both hold); a resume likewise. A Redis that
did not answer the second step gets it from the reconciler's next pass (``sync``), which makes the
set hold exactly what the store records. Pausing stops new starts only: running jobs finish, and the
queue's jobs stay QUEUED with ``waiting_reason: "queue_paused"``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from backend.broker import pauses as broker_pauses
from backend.broker.errors import BrokerError
from backend.core.errors import NotFound, ServiceUnavailable
from backend.core.settings import QUEUE_NAMES
from backend.store import queue_pauses as store_pauses
from backend.store.jobs import Sessions

if TYPE_CHECKING:  # the type only, as the broker names it (it alone imports redis)
    from backend.broker.connection import Redis

log = logging.getLogger(__name__)
#: Tries of a command's write of Redis's set; each lost try means a newer writer's write landed.
MIRROR_ATTEMPTS = 5


@dataclass(frozen=True)
class PauseOutcome:
    """What a pause or resume did: the queue's state after it, and whether this call changed it."""

    queue: str
    paused: bool
    changed: bool
    paused_at: datetime | None = None
    paused_by: str | None = None


def check_queue(name: str) -> str:
    """``name`` when it is one of the queues, else NotFound (404)."""
    if name not in QUEUE_NAMES:
        shown = name if len(name) <= 40 else f"{name[:40]}..."  # the answer does not echo a long path back
        raise NotFound(f"no queue {shown!r}; the queues are {', '.join(QUEUE_NAMES)}")
    return name


class QueuePauses:
    """The pause commands over the store's record and Redis's mirror."""

    def __init__(self, sessions: Sessions, redis: Redis):
        self.sessions = sessions
        self.redis = redis

    def pause(self, queue: str, *, by: str) -> PauseOutcome:
        """Pause ``queue`` (idempotent: a paused queue keeps its first time and author).

        Raises:
            NotFound: no such queue.
            ServiceUnavailable: recorded, but Redis did not take it (the next pass puts it there).
        """
        check_queue(queue)
        recorded, changed = store_pauses.pause(self.sessions, queue, by)
        if changed:  # once per change: a repeated pause changes nothing, so says nothing
            log.info("queue %s paused by %s", queue, by)
        self._mirror(queue, "paused")
        return PauseOutcome(queue, True, changed, recorded.paused_at, recorded.paused_by)

    def resume(self, queue: str, *, by: str) -> PauseOutcome:
        """Resume ``queue`` (idempotent); ``by`` is for the log line. Raises as ``pause``."""
        check_queue(queue)
        changed = store_pauses.resume(self.sessions, queue)
        if changed:
            log.info("queue %s resumed by %s", queue, by)
        self._mirror(queue, "resumed")
        return PauseOutcome(queue, False, changed)

    def _mirror(self, queue: str, what: str) -> None:
        """Write Redis's set from the store as it stands after this command's commit; a writer
        that raced this one and read the store later wins instead (then nothing is left to do)."""
        try:
            for _ in range(MIRROR_ATTEMPTS):
                if broker_pauses.replace(self.redis, lambda: self.paused().keys(), force=True) is not None:
                    return
        except BrokerError as exc:
            raise ServiceUnavailable(
                f"queue {queue} is {what} in the store, but Redis did not answer ({exc}); workers see it "
                "once Redis is back (the reconciler's next pass writes it), or send this request again"
            ) from None
        # Only under a storm of commands: every attempt lost to a newer writer, whose write stands.
        log.warning("queue %s %s: Redis's copy left to the writers that raced it and the next pass", queue, what)

    def paused(self) -> dict[str, store_pauses.Pause]:
        """The recorded pauses, by queue."""
        return store_pauses.paused(self.sessions)

    def sync(self) -> bool | None:
        """Make Redis's set hold what the store records (the reconciler's pass calls this):
        True when it changed the set, False when it held that, None when a pause or resume raced
        it (left for the next pass). Raises BrokerError / StoreUnavailable as they come."""
        changed = broker_pauses.replace(self.redis, lambda: self.paused().keys())
        if changed:
            log.warning("paused queues in Redis differed from the store's record; put back from the store")
        return changed

    def overview(self) -> list[dict]:
        """``GET /queues``: per queue its depth, pause, live listening workers and the jobs it
        completed in the last minute (one store statement for all queues).

        Raises:
            ServiceUnavailable: Redis does not answer (depth and workers live there).
        """
        pauses = self.paused()
        completed = store_pauses.completed_recently(self.sessions)
        try:
            states = broker_pauses.states(self.redis, QUEUE_NAMES)
        except BrokerError as exc:
            raise ServiceUnavailable(f"Redis unreachable: {exc}") from None
        queues = []
        for name in QUEUE_NAMES:
            state, pause = states[name], pauses.get(name)
            queues.append(
                {
                    "name": name,
                    "depth": state.depth,
                    "paused": pause is not None,
                    "paused_at": pause.paused_at if pause else None,
                    "paused_by": pause.paused_by if pause else None,
                    # What workers obey: differs from "paused" only while Redis lags the record.
                    "paused_in_redis": state.paused,
                    "workers": list(state.workers),
                    "completed_last_minute": completed.get(name, 0),
                }
            )
        return queues
