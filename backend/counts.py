"""Maintained job counts by task and status, so that stats and metrics never scan the jobs.

Every write of a job's status (``JobManager._transition``) and every new job moves these
counters in the same transaction, so they are exactly as true as the jobs table.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from backend.models import JobCount


def bump(session: Session, task: str, *, old: str | None, new: str | None, by: int = 1) -> None:
    """Move ``by`` jobs of ``task`` from status ``old`` to status ``new`` (None: from/to nowhere)."""
    if old is not None:
        session.execute(
            update(JobCount)
            .where(JobCount.task == task, JobCount.status == old)
            .values(count=JobCount.count - by)
            .execution_options(synchronize_session=False)
        )
    if new is not None:
        insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        statement = insert(JobCount).values(task=task, status=new, count=by)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=[JobCount.task, JobCount.status], set_={"count": JobCount.count + by}
            )
        )


def by_status(session: Session) -> dict[str, int]:
    totals: dict[str, int] = {}
    for status, count in session.execute(select(JobCount.status, JobCount.count)):
        totals[status] = totals.get(status, 0) + count
    return totals


def by_task_and_status(session: Session) -> list[tuple[str, str, int]]:
    return [tuple(row) for row in session.execute(select(JobCount.task, JobCount.status, JobCount.count))]
