"""Store: every statement on a job's log lines (``job_logs``) and their counters on the job's row.

Lines are capped per job. The counters ``log_lines``/``log_bytes`` on the job say what is kept,
so the cap costs no COUNT; a job's counters move by a compare-and-set (``WHERE log_lines = :seen
AND log_bytes = :seen``), so two batches of one job's lines never both take the last room, on
SQLite (no row locks) as on PostgreSQL. What to keep is the caller's decision (``Keep``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import Row, bindparam, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from backend.store.engine import transaction
from backend.store.models import Job, JobLog

_JOBS, _LOGS = Job.__table__, JobLog.__table__
_COUNTERS = select(_JOBS.c.id, _JOBS.c.log_lines, _JOBS.c.log_bytes).where(
    _JOBS.c.id.in_(bindparam("ids", expanding=True))
)
_MOVE = (
    update(_JOBS)
    .where(
        _JOBS.c.id == bindparam("_id"),
        _JOBS.c.log_lines == bindparam("_lines"),
        _JOBS.c.log_bytes == bindparam("_bytes"),
    )
    .values(log_lines=bindparam("lines"), log_bytes=bindparam("bytes"))
)
_INSERT = insert(_LOGS)
_PAGE = (
    select(_LOGS.c.id, _LOGS.c.attempt, _LOGS.c.at, _LOGS.c.level, _LOGS.c.message)
    .where(_LOGS.c.job_id == bindparam("job_id"), _LOGS.c.id > bindparam("after"))
    .order_by(_LOGS.c.id)
    .limit(bindparam("limit"))
)
#: How often one job's counters are read again after another batch moved them first.
MOVE_TRIES = 5


class Line(NamedTuple):
    """A line to keep: the attempt that logged it, when (UTC), its level and message."""

    attempt: int
    at: datetime
    level: str
    message: str


class Counters(NamedTuple):
    """What a job's log holds: lines (the cut marker included) and the messages' UTF-8 bytes."""

    lines: int
    bytes: int


#: ``keep(counters, lines)``: the lines to store of those offered, and the counters after them.
Keep = Callable[[Counters, list[Line]], tuple[list[Line], Counters]]


def append(sessions: sessionmaker[Session], lines_by_job: dict[str, list[Line]], keep: Keep) -> set[str]:
    """Store the lines ``keep`` takes of each job's, in one transaction; the ids of the jobs that exist.

    Jobs are written in id order (the store's one lock order).
    """
    with transaction(sessions) as session:
        connection = session.connection()
        counters = {row.id: Counters(row.log_lines, row.log_bytes) for row in connection.execute(
            _COUNTERS, {"ids": list(lines_by_job)}
        )}  # fmt: skip
        rows: list[dict] = []
        for job_id in sorted(counters):
            seen = counters[job_id]
            for _ in range(MOVE_TRIES):
                kept, after = keep(seen, lines_by_job[job_id])
                if not kept:
                    break
                params = {"_id": job_id, "_lines": seen.lines, "_bytes": seen.bytes, "lines": after.lines}
                if connection.execute(_MOVE, dict(params, bytes=after.bytes)).rowcount == 1:
                    rows.extend({"job_id": job_id, **line._asdict()} for line in kept)
                    break
                row = connection.execute(_COUNTERS, {"ids": [job_id]}).first()
                if row is None:
                    break
                seen = Counters(row.log_lines, row.log_bytes)
        if rows:
            connection.execute(_INSERT, rows)
    return set(counters)


def page(sessions: sessionmaker[Session], job_id: str, *, after: int, limit: int) -> list[Row]:
    """A job's lines with an id above ``after``, oldest first, at most ``limit``:
    ``(id, attempt, at, level, message)``."""
    with sessions.kw["bind"].connect() as connection:
        return list(connection.execute(_PAGE, {"job_id": job_id, "after": after, "limit": limit}))


def counters(sessions: sessionmaker[Session], job_id: str) -> Counters | None:
    """A job's log counters, or None when there is no such job."""
    with sessions.kw["bind"].connect() as connection:
        row = connection.execute(_COUNTERS, {"ids": [job_id]}).first()
    return Counters(row.log_lines, row.log_bytes) if row is not None else None
