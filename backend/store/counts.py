"""Job counts by task and status, so that stats and metrics never scan the jobs.

Every write of a job's status (``jobs.JobRows.compare_and_set``, the report batch path's
``report_writes``) and every new job appends a delta row (``job_count_deltas``) in its own
transaction: an INSERT of a row nobody else touches, so no two writers share a locked row (a
counter row updated in each job's transaction serialised every write of a task and, locked
after job rows by some commands and before them by others, deadlocked on PostgreSQL).
``roll_up`` folds deltas into ``job_counts``, one roller at a time; the readers add the deltas
not yet folded, so they are exactly as true as the jobs table.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, bindparam, func, insert, select, text, union_all
from sqlalchemy.orm import Session, sessionmaker

from backend.store.engine import transaction
from backend.store.models import JobCount, JobCountDelta

log = logging.getLogger(__name__)

#: Delta rows folded per roll-up transaction, and per ``roll_up`` call by default.
ROLL_UP_CHUNK = 5_000
ROLL_UP_LIMIT = 50_000
#: The key of the PostgreSQL advisory lock that lets one roller at a time fold the deltas.
ROLL_UP_LOCK_KEY = 0x6A6F6273_636F756E  # "jobscoun"

_COUNTS, _DELTAS = JobCount.__table__, JobCountDelta.__table__
# Prebuilt: this runs on every status change, where building a statement cost several times
# what executing it does.
_APPEND = insert(_DELTAS).values(
    task=bindparam("task"), old_status=bindparam("old"), new_status=bindparam("new"), jobs=bindparam("jobs")
)


def _totals():
    """Each (task, status)'s count: the rolled-up count plus the deltas not yet folded.

    One statement, so one snapshot: a roll-up committing meanwhile moves rows from one side to
    the other without the reader seeing them twice or not at all.
    """
    d = _DELTAS.c
    parts = union_all(
        select(_COUNTS.c.task, _COUNTS.c.status, _COUNTS.c.count.label("n")),
        select(d.task, d.new_status, d.jobs).where(d.new_status.is_not(None)),
        select(d.task, d.old_status, -d.jobs).where(d.old_status.is_not(None)),
    ).subquery("moves")
    return select(parts.c.task, parts.c.status, func.sum(parts.c.n)).group_by(parts.c.task, parts.c.status)


_TOTALS = _totals()


def bump(session: Session, task: str, *, old: str | None, new: str | None, by: int = 1) -> None:
    """Move ``by`` jobs of ``task`` from status ``old`` to status ``new`` (None: from/to nowhere)."""
    session.connection().execute(_APPEND, {"task": task, "old": old, "new": new, "jobs": by})


def record_moves(session: Session, moves: dict[tuple[str, str | None, str | None], int]) -> None:
    """Append many moves at once, ``{(task, old, new): jobs}``: one statement however many jobs moved."""
    if moves:
        record_moves_on(session.connection(), moves)


def record_moves_on(connection: Connection, moves: dict[tuple[str, str | None, str | None], int]) -> None:
    """``record_moves`` on a connection (in its transaction)."""
    if moves:
        rows = [{"task": task, "old": old, "new": new, "jobs": by} for (task, old, new), by in moves.items()]
        connection.execute(_APPEND, rows)


def by_status(session: Session) -> dict[str, int]:
    totals: dict[str, int] = {}
    for _task, status, count in session.execute(_TOTALS):
        totals[status] = totals.get(status, 0) + int(count)
    return totals


def by_task_and_status(session: Session) -> list[tuple[str, str, int]]:
    return [(task, status, int(count)) for task, status, count in session.execute(_TOTALS)]


# -- the roll-up ----------------------------------------------------------------------------

# PostgreSQL: deleting the oldest deltas and adding them to the counts is one statement, so the
# rows summed are exactly the rows deleted: a second roller (there is none while the advisory
# lock is held) waits for them and then finds them gone, never counting them twice.
_ROLL_UP_POSTGRESQL = text(
    """
    WITH moved AS (
        DELETE FROM job_count_deltas
        WHERE id IN (SELECT id FROM job_count_deltas ORDER BY id LIMIT :chunk)
        RETURNING task, old_status, new_status, jobs
    ), changes AS (
        SELECT task, new_status AS status, jobs AS n FROM moved WHERE new_status IS NOT NULL
        UNION ALL SELECT task, old_status, -jobs FROM moved WHERE old_status IS NOT NULL
    ), folded AS (
        INSERT INTO job_counts (task, status, count)
        SELECT task, status, SUM(n) FROM changes GROUP BY task, status ORDER BY task, status
        ON CONFLICT (task, status) DO UPDATE SET count = job_counts.count + excluded.count
        RETURNING 1
    )
    SELECT COUNT(*) FROM moved
    """
)
_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)")

# SQLite: writers take turns (one write transaction at a time), so the oldest ``chunk`` rows are
# the same rows in both statements. WHERE true: SQLite's parser needs it before ON CONFLICT.
_FOLD_SQLITE = text(
    """
    INSERT INTO job_counts (task, status, count)
    SELECT task, status, SUM(n) FROM (
        SELECT task, new_status AS status, jobs AS n FROM oldest WHERE new_status IS NOT NULL
        UNION ALL SELECT task, old_status, -jobs FROM oldest WHERE old_status IS NOT NULL
    ) WHERE true GROUP BY task, status
    ON CONFLICT (task, status) DO UPDATE SET count = count + excluded.count
    """.replace("oldest", "(SELECT * FROM job_count_deltas ORDER BY id LIMIT :chunk)")
)
_DELETE_SQLITE = text(
    "DELETE FROM job_count_deltas WHERE id IN (SELECT id FROM job_count_deltas ORDER BY id LIMIT :chunk)"
)


def _roll_chunk(session: Session, chunk: int) -> int | None:
    """Fold the oldest ``chunk`` deltas; how many were folded, None when another roller is at it."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        if not connection.execute(_TRY_LOCK, {"key": ROLL_UP_LOCK_KEY}).scalar_one():
            return None
        return connection.execute(_ROLL_UP_POSTGRESQL, {"chunk": chunk}).scalar_one()
    connection.execute(_FOLD_SQLITE, {"chunk": chunk})
    return connection.execute(_DELETE_SQLITE, {"chunk": chunk}).rowcount


def roll_up(sessions: sessionmaker[Session], *, limit: int = ROLL_UP_LIMIT, chunk: int = ROLL_UP_CHUNK) -> int:
    """Fold up to ``limit`` of the oldest deltas into ``job_counts``, ``chunk`` per transaction
    (short ones: writers are never held up for long); returns how many were folded.

    Any host may call it at any time: on PostgreSQL a second roller finds the advisory lock
    taken and returns at once; SQLite's writers take turns.
    """
    folded = 0
    while folded < limit:
        with transaction(sessions) as session:
            done = _roll_chunk(session, min(chunk, limit - folded))
        if not done:
            break
        folded += done
    if folded:
        log.debug("job counts: %d deltas rolled up", folded)
    return folded
