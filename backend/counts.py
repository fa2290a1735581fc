"""Maintained job counts by task and status, so that stats and metrics never scan the jobs.

Every write of a job's status (``JobManager._transition``) and every new job moves these
counters in the same transaction, so they are exactly as true as the jobs table.
"""

from __future__ import annotations

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from backend.models import JobCount
from backend.store import dialect_insert

_DECREMENT = (
    update(JobCount)
    .where(JobCount.task == bindparam("t"), JobCount.status == bindparam("s"))
    .values(count=JobCount.count - bindparam("n"))
    .execution_options(synchronize_session=False)
)
_INCREMENT: dict[str, object] = {}


def _increment(dialect: str):
    # Built once per dialect: this runs on every status change, where building the
    # statement cost several times what executing it does.
    if dialect not in _INCREMENT:
        insert = dialect_insert(dialect)
        statement = insert(JobCount).values(task=bindparam("t"), status=bindparam("s"), count=bindparam("n"))
        _INCREMENT[dialect] = statement.on_conflict_do_update(
            index_elements=[JobCount.task, JobCount.status], set_={"count": JobCount.count + statement.excluded.count}
        )
    return _INCREMENT[dialect]


def bump(session: Session, task: str, *, old: str | None, new: str | None, by: int = 1) -> None:
    """Move ``by`` jobs of ``task`` from status ``old`` to status ``new`` (None: from/to nowhere)."""
    if old is not None:
        session.execute(_DECREMENT, {"t": task, "s": old, "n": by})
    if new is not None:
        session.execute(_increment(session.get_bind().dialect.name), {"t": task, "s": new, "n": by})


def by_status(session: Session) -> dict[str, int]:
    totals: dict[str, int] = {}
    for status, count in session.execute(select(JobCount.status, JobCount.count)):
        totals[status] = totals.get(status, 0) + count
    return totals


def by_task_and_status(session: Session) -> list[tuple[str, str, int]]:
    return [tuple(row) for row in session.execute(select(JobCount.task, JobCount.status, JobCount.count))]
