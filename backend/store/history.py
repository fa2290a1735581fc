"""Store: the service's own per-minute history (``job_minutes``, ``queue_minutes``) for the dashboard.

``ended_in`` counts one minute of ended jobs from the jobs table, answered from indexes (the
partial ``ix_jobs_completed`` for COMPLETED, ``ix_jobs_status_completed`` for FAILED) and grouped
in SQL, so a minute of 10,000 jobs returns a few rows per task, never the jobs. ``merge_minute``
writes a minute's rows, never lowering what they hold, so rolling a minute twice leaves the same
rows, and a job pruned between the two rolls stays counted. The row of task ``TOTAL`` ("") is the
minute's total: the charts' points read it alone, and its presence is what says the minute was
rolled (a minute without jobs has only it).
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import bindparam, delete, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from backend.store.models import COMPLETED_ONLY, JobMinute, QueueMinute, UTCDateTime

#: Upper bounds (ms, inclusive) of the run-time buckets; one more bucket counts the runs above the last.
RUN_MS_BOUNDS = (
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000,
    100_000, 200_000, 500_000, 1_000_000, 2_000_000, 3_600_000,
)  # fmt: skip
BUCKETS = len(RUN_MS_BOUNDS) + 1
#: The task name of a minute's total row (no task is named "").
TOTAL = ""

_MINUTES, _QUEUES = JobMinute.__table__, QueueMinute.__table__
#: A run's length in ms (NULL when it has no start), per dialect: both columns hold naive UTC.
_RUN_MS = {
    "sqlite": "(julianday(completed_at) - julianday(started_at)) * 86400000.0",
    "postgresql": "(extract(epoch from (completed_at - started_at)) * 1000)",
}
#: The run-time bucket of a COMPLETED job: 0..BUCKETS-1, or -1 for a run with no start.
_BUCKET = (
    "CASE WHEN {run} IS NULL THEN -1 "
    + " ".join(f"WHEN {{run}} <= {bound} THEN {index}" for index, bound in enumerate(RUN_MS_BOUNDS))
    + f" ELSE {len(RUN_MS_BOUNDS)} END"
)
# Statuses are literals, as the partial indexes' predicates spell them (SQLite matches a partial
# index only to terms that state its predicate, never to a bound value); SQLite is also told the
# index (INDEXED BY): without statistics its planner took ix_jobs_status_created and walked every
# COMPLETED job of the store for each minute (0.7 s a minute on 120,000 jobs).
_IN_MINUTE = "completed_at >= :start AND completed_at < :end"
_COMPLETED = (
    "SELECT task, {bucket} AS bucket, count(*) FROM jobs{index} "
    f"WHERE {COMPLETED_ONLY} AND {_IN_MINUTE} GROUP BY task, bucket"
)
_FAILED = f"SELECT task, count(*) FROM jobs{{index}} WHERE status = 'FAILED' AND {_IN_MINUTE} GROUP BY task"
_RANGE = (bindparam("start", type_=UTCDateTime()), bindparam("end", type_=UTCDateTime()))


def _statements(dialect: str) -> tuple:
    """The COMPLETED and FAILED statements of ``ended_in`` for a dialect."""
    sqlite = dialect != "postgresql"
    bucket = _BUCKET.format(run=_RUN_MS["sqlite" if sqlite else "postgresql"])
    completed = _COMPLETED.format(bucket=bucket, index=" INDEXED BY ix_jobs_completed" if sqlite else "")
    failed = _FAILED.format(index=" INDEXED BY ix_jobs_status_completed" if sqlite else "")
    return text(completed).bindparams(*_RANGE), text(failed).bindparams(*_RANGE)


_STATEMENTS = {dialect: _statements(dialect) for dialect in ("sqlite", "postgresql")}


def newest_rolled(session: Session) -> datetime | None:
    """The newest minute rolled up (its total row's), or None when none is."""
    return session.execute(select(func.max(_MINUTES.c.minute)).where(_MINUTES.c.task == TOTAL)).scalar()


def ended_in(session: Session, start: datetime, end: datetime) -> dict[str, list]:
    """The jobs that ended in [start, end): per task ``[completed, failed, run_ms counts]``."""
    completed, failed = _STATEMENTS["postgresql" if session.get_bind().dialect.name == "postgresql" else "sqlite"]
    window = {"start": start, "end": end}
    tasks: dict[str, list] = {}
    for task, index, count in session.execute(completed, window):
        row = tasks.setdefault(task, [0, 0, [0] * BUCKETS])
        row[0] += count
        if index is not None and 0 <= index < BUCKETS:
            row[2][index] += count
    for task, count in session.execute(failed, window):
        tasks.setdefault(task, [0, 0, [0] * BUCKETS])[1] += count
    return tasks


def _insert(session: Session, table):
    return pg_insert(table) if session.get_bind().dialect.name == "postgresql" else sqlite_insert(table)


def _padded(run_ms: list | None) -> list[int]:
    """A run_ms list as BUCKETS counts (a row written with fewer buckets reads as zeros past them)."""
    counts = [int(count) for count in (run_ms or [])[:BUCKETS]]
    return counts + [0] * (BUCKETS - len(counts))


def merge_minute(session: Session, minute: datetime, rows: dict[str, list]) -> None:
    """Write ``minute``'s rows ({task: [completed, failed, run_ms]}, TOTAL included), never below
    what the minute already holds: each count (and run-time bucket) keeps the greater of the stored
    and the new value, and a task no longer counted keeps its row. Rolling a minute again counts
    runs reported late, but a job pruned since (a short retention) is not taken off the chart.

    The upsert lets two passes rolling the same minute at once both succeed on PostgreSQL."""
    c = _MINUTES.c
    stored = session.execute(select(c.task, c.completed, c.failed, c.run_ms).where(c.minute == minute))
    merged = {task: list(row) for task, row in rows.items()}
    for task, completed, failed, run_ms in stored:
        new = merged.get(task)
        if new is None:
            merged[task] = [completed, failed, run_ms]
            continue
        old, fresh = _padded(run_ms), _padded(new[2])
        merged[task] = [
            max(completed, new[0]),
            max(failed, new[1]),
            [max(a, b) for a, b in zip(fresh, old, strict=True)],
        ]
    values = [
        {"minute": minute, "task": task, "completed": completed, "failed": failed, "run_ms": run_ms}
        for task, (completed, failed, run_ms) in merged.items()
    ]
    statement = _insert(session, _MINUTES)
    excluded = statement.excluded
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["minute", "task"],
            set_={"completed": excluded.completed, "failed": excluded.failed, "run_ms": excluded.run_ms},
        ),
        values,
    )


def add_queue_depths(session: Session, minute: datetime, depths: dict[str, int]) -> None:
    """Record each queue's depth for ``minute``; a minute already sampled keeps its sample."""
    if depths:
        values = [{"minute": minute, "queue": queue, "depth": depth} for queue, depth in depths.items()]
        statement = _insert(session, _QUEUES).on_conflict_do_nothing(index_elements=["minute", "queue"])
        session.execute(statement, values)


def totals(session: Session, start: datetime, end: datetime) -> list[tuple[datetime, int, int]]:
    """(minute, completed, failed) of each rolled minute in [start, end), oldest first."""
    c = _MINUTES.c
    query = (
        select(c.minute, c.completed, c.failed)
        .where(c.minute >= start, c.minute < end, c.task == TOTAL)
        .order_by(c.minute)
    )
    return [tuple(row) for row in session.execute(query)]


#: Per dialect, one range's task rows summed per task in SQL, the group's run_ms lists joined as
#: one JSON text: a quarter hour of a task is one row to decode instead of 15.
_SUMMED = (
    "SELECT task, sum(completed), sum(failed), {joined} FROM job_minutes"
    " WHERE minute >= :start AND minute < :end AND task != '' GROUP BY task"
)
_SUMMED_STATEMENTS = {
    dialect: text(_SUMMED.format(joined=joined)).bindparams(*_RANGE)
    for dialect, joined in (("sqlite", "group_concat(run_ms, ',')"), ("postgresql", "string_agg(run_ms::text, ',')"))
}


def task_sums(session: Session, start: datetime, end: datetime) -> dict[str, list]:
    """The task rows of [start, end) summed per task: {task: [completed, failed, run_ms]} (totals
    left out): one row per task to decode, however many minutes the range has."""
    dialect = "postgresql" if session.get_bind().dialect.name == "postgresql" else "sqlite"
    found = {}
    for task, completed, failed, joined in session.execute(_SUMMED_STATEMENTS[dialect], {"start": start, "end": end}):
        lists = json.loads(f"[{joined or ''}]")
        if any(
            not isinstance(run_ms, list) or len(run_ms) != BUCKETS for run_ms in lists
        ):  # rows as the roll-up writes them need no padding
            lists = [_padded(run_ms) for run_ms in lists]
        found[task] = [int(completed), int(failed), [sum(column) for column in zip(*lists, strict=True)]]
    return found


def queue_depths(session: Session, start: datetime, end: datetime) -> list[tuple[datetime, str, int]]:
    """(minute, queue, depth) of every sample in [start, end), oldest first."""
    c = _QUEUES.c
    query = select(c.minute, c.queue, c.depth).where(c.minute >= start, c.minute < end).order_by(c.minute)
    return [tuple(row) for row in session.execute(query)]


def oldest_minute(session: Session) -> datetime | None:
    """The oldest minute the history holds (job or queue rows), or None when it is empty."""
    oldest = [session.scalar(select(func.min(table.c.minute))) for table in (_MINUTES, _QUEUES)]
    return min((minute for minute in oldest if minute is not None), default=None)


def delete_before(session: Session, before: datetime) -> int:
    """Delete the history older than ``before``; how many rows went (callers bound the range)."""
    gone = session.execute(delete(_MINUTES).where(_MINUTES.c.minute < before)).rowcount
    return gone + session.execute(delete(_QUEUES).where(_QUEUES.c.minute < before)).rowcount
