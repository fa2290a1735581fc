"""Store: the service's own per-minute history (``job_minutes``, ``queue_minutes``) for the dashboard.

``ended_in`` counts one minute of ended jobs from the jobs table, answered from indexes (the
partial ``ix_jobs_completed`` for COMPLETED, ``ix_jobs_status_completed`` for FAILED) and grouped
in SQL, so a minute of 10,000 jobs returns a few rows per task, never the jobs. ``replace_minute``
writes a minute's rows whole (upserts, the minute's other rows deleted), so rolling a minute twice
leaves the same rows. The row of task ``TOTAL`` ("") is the minute's total: the charts' points
read it alone, and its presence is what says the minute was rolled (a minute without jobs has
only it).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, delete, func, literal_column, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from backend.store.models import COMPLETED_ONLY, Job, JobMinute, QueueMinute

#: Upper bounds (ms, inclusive) of the run-time buckets; one more bucket counts the runs above the last.
RUN_MS_BOUNDS = (
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000,
    100_000, 200_000, 500_000, 1_000_000, 2_000_000, 3_600_000,
)  # fmt: skip
BUCKETS = len(RUN_MS_BOUNDS) + 1
#: The task name of a minute's total row (no task is named "").
TOTAL = ""

_MINUTES, _QUEUES = JobMinute.__table__, QueueMinute.__table__
_JOBS = Job.__table__
#: A run's length in ms (NULL when it has no start), per dialect: both columns hold naive UTC.
_RUN_MS = {
    "sqlite": literal_column("(julianday(completed_at) - julianday(started_at)) * 86400000.0"),
    "postgresql": literal_column("(extract(epoch from (completed_at - started_at)) * 1000)"),
}
#: The FAILED jobs' predicate stated literally, as COMPLETED_ONLY is (a bound value would keep
#: SQLite's planner from matching an index with a status term).
_FAILED_ONLY = "status = 'FAILED'"


def _bucket(dialect: str):
    """The run-time bucket of a COMPLETED job: 0..BUCKETS-1, or -1 for a run with no start."""
    run_ms = _RUN_MS["postgresql" if dialect == "postgresql" else "sqlite"]
    whens = [(run_ms.is_(None), -1)] + [(run_ms <= bound, index) for index, bound in enumerate(RUN_MS_BOUNDS)]
    return case(*whens, else_=len(RUN_MS_BOUNDS))


def newest_rolled(session: Session) -> datetime | None:
    """The newest minute rolled up (its total row's), or None when none is."""
    return session.execute(select(func.max(_MINUTES.c.minute)).where(_MINUTES.c.task == TOTAL)).scalar()


def ended_in(session: Session, start: datetime, end: datetime) -> dict[str, list]:
    """The jobs that ended in [start, end): per task ``[completed, failed, run_ms counts]``."""
    dialect = session.get_bind().dialect.name
    bucket = _bucket(dialect).label("bucket")
    in_range = (_JOBS.c.completed_at >= start, _JOBS.c.completed_at < end)
    tasks: dict[str, list] = {}
    completed = (
        select(_JOBS.c.task, bucket, func.count()).where(text(COMPLETED_ONLY), *in_range).group_by(_JOBS.c.task, bucket)
    )
    for task, index, count in session.execute(completed):
        row = tasks.setdefault(task, [0, 0, [0] * BUCKETS])
        row[0] += count
        if index is not None and 0 <= index < BUCKETS:
            row[2][index] += count
    failed = select(_JOBS.c.task, func.count()).where(text(_FAILED_ONLY), *in_range).group_by(_JOBS.c.task)
    for task, count in session.execute(failed):
        tasks.setdefault(task, [0, 0, [0] * BUCKETS])[1] += count
    return tasks


def _insert(session: Session, table):
    return pg_insert(table) if session.get_bind().dialect.name == "postgresql" else sqlite_insert(table)


def replace_minute(session: Session, minute: datetime, rows: dict[str, list]) -> None:
    """Make ``minute``'s rows exactly ``rows`` ({task: [completed, failed, run_ms]}, TOTAL included).

    The upsert (not a plain insert after the delete) lets two passes rolling the same minute at
    once both succeed on PostgreSQL, where the second's delete cannot see the first's new rows."""
    session.execute(delete(_MINUTES).where(_MINUTES.c.minute == minute, _MINUTES.c.task.not_in(list(rows))))
    values = [
        {"minute": minute, "task": task, "completed": completed, "failed": failed, "run_ms": run_ms}
        for task, (completed, failed, run_ms) in rows.items()
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


def task_minutes(session: Session, start: datetime, end: datetime) -> list[tuple[str, int, int, list]]:
    """(task, completed, failed, run_ms) of every task row in [start, end) (totals left out)."""
    c = _MINUTES.c
    query = select(c.task, c.completed, c.failed, c.run_ms).where(c.minute >= start, c.minute < end, c.task != TOTAL)
    return [tuple(row) for row in session.execute(query)]


def queue_depths(session: Session, start: datetime, end: datetime) -> list[tuple[datetime, str, int]]:
    """(minute, queue, depth) of every sample in [start, end), oldest first."""
    c = _QUEUES.c
    query = select(c.minute, c.queue, c.depth).where(c.minute >= start, c.minute < end).order_by(c.minute)
    return [tuple(row) for row in session.execute(query)]


def delete_before(session: Session, before: datetime) -> int:
    """Delete the history older than ``before``; how many rows went."""
    gone = session.execute(delete(_MINUTES).where(_MINUTES.c.minute < before)).rowcount
    return gone + session.execute(delete(_QUEUES).where(_QUEUES.c.minute < before)).rowcount
