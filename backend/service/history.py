"""The service's own history for the dashboard's charts: rolled up per minute, bounded, pruned.

Three housekeeping steps (backend/recovery/housekeeping.py runs them in one process of the
fleet; roll_up and prune in every process while Redis is unreachable): ``roll_up`` counts the
minutes that ended into ``job_minutes`` (at most ``CATCH_UP_MINUTES`` new minutes and
``BUDGET_SECONDS`` per pass, oldest first, plus the ``REROLL_MINUTES`` before them again, for runs
reported late; a count is never lowered, so jobs pruned meanwhile stay counted), ``sample_queues``
records each queue's depth once a minute, and ``prune`` deletes what is older than HISTORY_DAYS,
``PRUNE_MINUTES`` per transaction. Nothing here runs on a submission or a report: the history
costs the hot paths nothing. ``read`` answers GET /monitoring/history (the day's final quarter
hours summed once per process, see ``_Quarters``).
"""

from __future__ import annotations

import threading
import time
import weakref
from datetime import datetime, timedelta

from backend.broker import registries
from backend.core.settings import QUEUE_NAMES
from backend.service.representations import iso
from backend.store import clock
from backend.store import history as store
from backend.store.engine import transaction

MINUTE = timedelta(minutes=1)
#: New minutes rolled per pass at most: a pass's work is bounded however long the API was away.
CATCH_UP_MINUTES = 60
#: Seconds a pass spends rolling at most (a minute of a very busy store costs more than most).
BUDGET_SECONDS = 2.0
#: Minutes before the new ones rolled again with them: a run reported after its minute was
#: rolled (a report retried for a while) still counts, if no later than this.
REROLL_MINUTES = 2
#: A minute is rolled once it ended this long ago (reports in flight land first).
GRACE = timedelta(seconds=5)
#: Task rows per minute, and tasks per answer, at most; the rest are folded into OTHER_TASKS.
MAX_TASKS = 200
OTHER_TASKS = "(other tasks)"
#: window -> (steps, seconds per step).
WINDOWS = {"hour": (60, 60), "day": (96, 900)}
#: Minutes of history deleted per transaction by ``prune``, oldest first: a transaction holds at
#: most ~15 x 204 rows (SQLite's write lock: every submission waits for it), however many go.
PRUNE_MINUTES = 15


def floor_minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def _floor(at: datetime, seconds: int) -> datetime:
    epoch = at.timestamp()
    return at - timedelta(seconds=epoch % seconds)


def fold(tasks: dict[str, list], cap: int = MAX_TASKS) -> dict[str, list]:
    """At most ``cap`` tasks, the busiest; the others summed into OTHER_TASKS (one of the ``cap``)."""
    if len(tasks) <= cap:
        return tasks
    ranked = sorted(tasks.items(), key=lambda item: (-(item[1][0] + item[1][1]), item[0]))
    kept = dict(ranked[: cap - 1])
    other = [0, 0, [0] * store.BUCKETS]
    for _task, row in ranked[cap - 1 :]:
        _add(other, row)
    kept[OTHER_TASKS] = _add(kept.get(OTHER_TASKS, [0, 0, [0] * store.BUCKETS]), other)
    return kept


def _add(into: list, row: list) -> list:
    """Add a [completed, failed, run_ms] row into another (run_ms lists of any length)."""
    into[0] += row[0]
    into[1] += row[1]
    counts = row[2] or []
    for index, count in enumerate(counts[: store.BUCKETS]):
        into[2][index] += int(count)
    return into


def total(tasks: dict[str, list]) -> list:
    whole = [0, 0, [0] * store.BUCKETS]
    for row in tasks.values():
        _add(whole, row)
    return whole


def percentile(counts: list[int], q: float) -> float | None:
    """The ``q`` quantile (0 < q <= 1) of runs counted per bucket, interpolated linearly within
    its bucket (runs above the last bound answer that bound); None when no run was counted."""
    runs = sum(counts)
    if runs == 0:
        return None
    rank = q * runs
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            low = store.RUN_MS_BOUNDS[index - 1] if index > 0 else 0
            high = store.RUN_MS_BOUNDS[min(index, len(store.RUN_MS_BOUNDS) - 1)]
            return round(low + (high - low) * (rank - seen) / count, 1)
        seen += count
    return float(store.RUN_MS_BOUNDS[-1])


class History:
    """The housekeeping steps that keep the history: ``roll_up``, ``sample_queues``, ``prune``."""

    def __init__(self, sessions, queues, days: int, *, budget_seconds: float = BUDGET_SECONDS):
        self.sessions = sessions
        self.budget_seconds = budget_seconds
        #: The broker's queue adapter (``Services.queues``): its queues' lengths are the depths.
        self.queues = queues
        self.days = days
        self._sampled: datetime | None = None

    def roll_up(self, now: datetime | None = None) -> int:
        """Roll the minutes that ended since the last pass into ``job_minutes``; how many were rolled."""
        with self.sessions() as session:
            now = now or clock.now(session)
            newest = store.newest_rolled(session)
        last = floor_minute(now - GRACE) - MINUTE
        oldest = floor_minute(now) - timedelta(days=self.days)
        if newest is None:  # a new history starts an hour back; older jobs are not back-filled
            first_new = last - (CATCH_UP_MINUTES - 1) * MINUTE
            first = first_new
        elif newest >= last:
            return 0
        else:
            first_new = newest + MINUTE
            first = newest - (REROLL_MINUTES - 1) * MINUTE
        first = max(first, oldest)
        last = min(last, max(first_new, oldest) + (CATCH_UP_MINUTES - 1) * MINUTE)
        deadline = time.monotonic() + self.budget_seconds
        rolled = 0
        minute = first
        while minute <= last:
            # Past the budget, the rest waits for the next pass; the minutes rolled again and the
            # first new one always run, so even a busy store's history moves on every pass.
            if minute > max(first_new, first) and time.monotonic() > deadline:
                break
            # One transaction per minute: the store's write lock is held for one minute's rows.
            with transaction(self.sessions) as session:
                tasks = fold(store.ended_in(session, minute, minute + MINUTE))
                store.merge_minute(session, minute, {store.TOTAL: total(tasks), **tasks})
            rolled += 1
            minute += MINUTE
        return rolled

    def sample_queues(self, now: datetime | None = None) -> dict[str, int] | None:
        """Record each queue's depth once per minute; the depths recorded (None: this minute's done).

        Raises:
            BrokerError: Redis is unreachable (the housekeeping pass logs it and goes on).
        """
        with self.sessions() as session:
            minute = floor_minute(now or clock.now(session))
        if minute == self._sampled:
            return None
        depths = {name: counts["queued"] for name, counts in registries.queue_counts(self.queues).items()}
        with transaction(self.sessions) as session:
            store.add_queue_depths(session, minute, depths)
        self._sampled = minute
        return depths

    def prune(self, now: datetime | None = None) -> int:
        """Delete the history older than HISTORY_DAYS, PRUNE_MINUTES per transaction, oldest first,
        until done or past the pass's budget (the first range always goes); how many rows went."""
        with self.sessions() as session:
            before = floor_minute(now or clock.now(session)) - timedelta(days=self.days)
            oldest = store.oldest_minute(session)
        deadline = time.monotonic() + self.budget_seconds
        gone = 0
        while oldest is not None and oldest < before:
            with transaction(self.sessions) as session:
                gone += store.delete_before(session, min(before, oldest + PRUNE_MINUTES * MINUTE))
                oldest = store.oldest_minute(session)
            if time.monotonic() > deadline:
                break
        return gone


class _Quarters:
    """The day window's task rows summed per quarter hour, for the quarters no pass will change.

    The day's task table sums up to 1,440 x 201 rows (a store at the task cap): read and summed on
    every refresh, that was seconds on an API thread. A quarter is final once its last minute is
    older than the first one the next roll-up re-rolls (``merge_minute`` never lowers a row, and
    ``prune`` reaches no minute of the day window while HISTORY_DAYS >= 1); only the quarters under
    way are read again. At most a day of quarters per store, each folded to MAX_TASKS.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._sums: dict[datetime, dict[str, list]] = {}

    def tasks(self, session, start: datetime, end: datetime, newest: datetime | None) -> dict[str, list]:
        """The task rows of [start, end) summed per task (quarters final by ``newest`` kept)."""
        step = timedelta(seconds=WINDOWS["day"][1])
        final_until = newest - (REROLL_MINUTES - 1) * MINUTE if newest is not None else start
        with self._lock:
            for quarter in [quarter for quarter in self._sums if quarter < start]:
                del self._sums[quarter]
            kept = dict(self._sums)
        first_missing = start
        while first_missing in kept and first_missing < end:
            first_missing += step
        fresh: dict[datetime, dict[str, list]] = {}
        quarter = first_missing
        while quarter < end:  # one query per quarter, summed per task in SQL (small sorts, one row a task)
            fresh[quarter] = store.task_sums(session, quarter, quarter + step)
            quarter += step
        with self._lock:
            quarter = first_missing  # every final quarter read is kept, those without rows too
            while quarter + step <= min(final_until, end):
                self._sums[quarter] = fold(fresh[quarter])
                quarter += step
        whole: dict[str, list] = {}
        for rows in [*(kept[q] for q in kept if q < first_missing), *fresh.values()]:
            for task, row in rows.items():
                _add(whole.setdefault(task, [0, 0, [0] * store.BUCKETS]), row)
        return whole


#: One ``_Quarters`` per store (its session factory), gone with it.
_QUARTERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_QUARTERS_LOCK = threading.Lock()


def _quarters(sessions) -> _Quarters:
    with _QUARTERS_LOCK:
        found = _QUARTERS.get(sessions)
        if found is None:
            found = _QUARTERS[sessions] = _Quarters()
        return found


def read(sessions, window: str, now: datetime | None = None) -> dict:
    """GET /monitoring/history's answer for ``window`` ("hour": 60 steps of 60 s, "day": 96 of 900 s)."""
    steps, step_seconds = WINDOWS[window]
    step = timedelta(seconds=step_seconds)
    with sessions() as session:
        now = now or clock.now(session)
        # The hour ends with the last full minute; the day with the quarter hour under way.
        end = floor_minute(now) if window == "hour" else _floor(floor_minute(now), step_seconds) + step
        start = end - steps * step
        totals = store.totals(session, start, end)
        newest = store.newest_rolled(session)
        if window == "day":
            tasks = _quarters(sessions).tasks(session, start, end, newest)
        else:  # an hour: at most 60 x 200 rows, summed per task in SQL
            tasks = store.task_sums(session, start, end)
        # The queues' series runs up to the newest sample (the minute under way included).
        samples = store.queue_depths(session, start, max(end, floor_minute(now) + MINUTE))

    def slot(minute: datetime) -> int:
        return int((minute - start) / step)

    points = [{"at": iso(start + index * step), "completed": 0, "failed": 0} for index in range(steps)]
    for minute, completed, failed in totals:
        point = points[slot(minute)]
        point["completed"] += completed
        point["failed"] += failed
    queues: dict[str, dict[int, int]] = {name: {} for name in QUEUE_NAMES}
    for minute, queue, depth in samples:  # oldest first: a step keeps its last sample
        queues.setdefault(queue, {})[slot(minute)] = depth
    ranked = sorted(fold(tasks).items(), key=lambda item: (-(item[1][0] + item[1][1]), item[0]))
    return {
        "window": window,
        "step_seconds": step_seconds,
        "rolled_until": iso(newest + MINUTE) if newest is not None else None,
        "points": points,
        "queues": {
            name: [{"at": iso(start + index * step), "depth": depth} for index, depth in sorted(by_step.items())]
            for name, by_step in queues.items()
        },
        "tasks": [
            {
                "task": task,
                "completed": completed,
                "failed": failed,
                "p50_ms": percentile(run_ms, 0.5),
                "p95_ms": percentile(run_ms, 0.95),
            }
            for task, (completed, failed, run_ms) in ranked
        ],
    }
