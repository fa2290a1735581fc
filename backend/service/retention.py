"""Retention: finished jobs deleted once older than their status's RETENTION_* (issue 16).

The housekeeping pass calls ``prune_pass`` every HOUSEKEEPING_INTERVAL seconds; ``python -m backend
prune`` calls ``prune``. Both delete at most PRUNE_BATCH jobs and about ROWS_PER_TRANSACTION rows
per transaction and sleep a little between transactions: on SQLite a delete holds the one write
lock, and submissions waiting for it must get their turn between batches (the submission p99
under a prune is bench/prune.py's figure).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from backend.core.durations import parse_duration
from backend.core.instruments import JOBS_PRUNED
from backend.core.settings import Settings
from backend.core.states import JobStatus
from backend.store import clock, retention
from backend.store.jobs import Sessions

log = logging.getLogger(__name__)

#: The end statuses in the order a pass visits them.
STATUSES = (JobStatus.COMPLETED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value)
#: Seconds of deleting per housekeeping pass at most: the pass's other steps and the next pass
#: wait for it, and a backlog (a first prune of years of jobs) is worked off over many passes.
PASS_SECONDS = 2.0
#: Rows (log lines, attempts, jobs) one delete transaction removes at most, about: PRUNE_BATCH
#: jobs with full logs would be 25,000 rows and hold SQLite's write lock for seconds.
ROWS_PER_TRANSACTION = 2000
#: Seconds between two delete transactions: the writers queued behind one take the lock first.
PAUSE_SECONDS = 0.05


def policy_from_settings(settings: Settings) -> dict[str, float | None]:
    """Each end status's retention in seconds (None: kept for ever), from RETENTION_*."""
    return {
        "COMPLETED": parse_duration(settings.retention_completed),
        "FAILED": parse_duration(settings.retention_failed),
        "CANCELLED": parse_duration(settings.retention_cancelled),
    }


class Retention:
    """Deletes ended jobs past their retention, a batch per transaction."""

    def __init__(
        self,
        sessions: Sessions,
        policy: dict[str, float | None],
        *,
        batch: int = 25,
        rows: int = ROWS_PER_TRANSACTION,
        pause: float = PAUSE_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.sessions = sessions
        self.policy = dict(policy)
        self.batch = batch
        self.rows = rows
        self.pause = pause
        self._sleep = sleep
        self._took = 0.0

    def _cutoffs(self, statuses: Iterable[str], older_than: float | None):
        """(status, cut-off time) for each status with a retention: jobs ended before it go."""
        now = clock.store_now(self.sessions)
        for status in statuses:
            seconds = older_than if older_than is not None else self.policy.get(status)
            if seconds is not None:
                yield status, now - timedelta(seconds=seconds)

    def _delete_batch(self, status: str, before: datetime) -> tuple[int, bool]:
        """One transaction: (jobs deleted, whether more may be left)."""
        started = time.monotonic()
        engine = self.sessions.kw["bind"]
        deleted, more = retention.prune_batch(engine, status, before, self.batch, self.rows)
        if deleted:
            JOBS_PRUNED.labels(status=status).inc(deleted)
        self._took = time.monotonic() - started
        return deleted, more

    def _rest(self, deadline: float | None = None) -> None:
        """Sleep between transactions: PAUSE_SECONDS, or as long as the last one took if longer, so
        a prune has at most half of the store's writes however slow a batch gets (a busy host);
        never past a pass's deadline."""
        pause = max(self.pause, self._took)
        if deadline is not None:
            pause = min(pause, max(0.0, deadline - time.monotonic()))
        self._sleep(pause)

    def prune_pass(self, deadline: float | None = None) -> dict[str, int]:
        """Delete batches of every status in turn until none is left or ``deadline`` (monotonic) passes.

        Returns the jobs deleted per status (statuses with none left out).
        """
        if deadline is None:
            deadline = time.monotonic() + PASS_SECONDS
        pending = dict(self._cutoffs(STATUSES, None))
        done: dict[str, int] = {}
        while pending and time.monotonic() < deadline:
            for status, before in list(pending.items()):
                deleted, more = self._delete_batch(status, before)
                if deleted:
                    done[status] = done.get(status, 0) + deleted
                if not more:
                    # None left (or only rows a race kept): the next pass looks again.
                    pending.pop(status)
                if time.monotonic() >= deadline:
                    break
                self._rest(deadline)
        if done:
            log.info("retention: pruned %s", ", ".join(f"{n} {status}" for status, n in done.items()))
        return done

    def prune(
        self, statuses: Iterable[str] | None = None, older_than: float | None = None, *, dry_run: bool = False
    ) -> dict[str, int]:
        """Delete (or with ``dry_run`` count) every job of ``statuses`` past its retention, or past
        ``older_than`` seconds when given; {status: jobs}. A status kept for ever is left out."""
        result: dict[str, int] = {}
        for status, before in self._cutoffs(statuses or STATUSES, older_than):
            if dry_run:
                with self.sessions() as session:
                    result[status] = retention.count_prunable(session, status, before)
                continue
            total = 0
            while True:
                deleted, more = self._delete_batch(status, before)
                total += deleted
                if not more:
                    break
                self._rest()
            result[status] = total
        return result
