"""Maintained job counts by task and status, so that stats and metrics never scan the jobs.

Every write of a job's status (``jobs.JobRows.compare_and_set``, and the report batch path's
``report_writes``) and every new job moves these counters in the same transaction, so they are
exactly as true as the jobs table.
"""

from __future__ import annotations

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from backend.store.engine import dialect_insert
from backend.store.models import JobCount

# Core statements on the table, run on the session's connection: no ORM machinery per call.
_TABLE = JobCount.__table__
_DECREMENT = (
    update(_TABLE)
    .where(_TABLE.c.task == bindparam("t"), _TABLE.c.status == bindparam("s"))
    .values(count=_TABLE.c.count - bindparam("n"))
)
_INCREMENT: dict[str, object] = {}


def _increment(dialect: str):
    # Built once per dialect: this runs on every status change, where building the
    # statement cost several times what executing it does.
    if dialect not in _INCREMENT:
        insert = dialect_insert(dialect)
        statement = insert(_TABLE).values(task=bindparam("t"), status=bindparam("s"), count=bindparam("n"))
        _INCREMENT[dialect] = statement.on_conflict_do_update(
            index_elements=[_TABLE.c.task, _TABLE.c.status], set_={"count": _TABLE.c.count + statement.excluded.count}
        )
    return _INCREMENT[dialect]


def bump(session: Session, task: str, *, old: str | None, new: str | None, by: int = 1) -> None:
    """Move ``by`` jobs of ``task`` from status ``old`` to status ``new`` (None: from/to nowhere)."""
    connection = session.connection()
    if old is not None:
        connection.execute(_DECREMENT, {"t": task, "s": old, "n": by})
    if new is not None:
        connection.execute(_increment(connection.dialect.name), {"t": task, "s": new, "n": by})


def by_status(session: Session) -> dict[str, int]:
    totals: dict[str, int] = {}
    for status, count in session.execute(select(JobCount.status, JobCount.count)):
        totals[status] = totals.get(status, 0) + count
    return totals


def by_task_and_status(session: Session) -> list[tuple[str, str, int]]:
    return [tuple(row) for row in session.execute(select(JobCount.task, JobCount.status, JobCount.count))]
