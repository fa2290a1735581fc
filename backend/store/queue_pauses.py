"""Store: the record of paused queues (``queue_pauses``) and the jobs each queue completed lately.

The record is what a pause is: Redis's set (backend/broker/pauses.py) is its mirror for the
workers, put back from here by the reconciler's pass. A pause and a resume are idempotent: the
row of a queue paused twice keeps its first time and author.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, delete, literal_column, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from backend.store import clock
from backend.store.engine import transaction
from backend.store.models import COMPLETED_ONLY, QueuePause, UTCDateTime, utcnow

_PAUSES = QueuePause.__table__
#: "The last minute" of GET /queues' throughput.
RECENT = timedelta(seconds=60)
#: The count per queue, its index's predicate stated; ``index`` and ``since`` per dialect.
_RECENT = (
    f"SELECT priority, count(*) FROM jobs{{index}} WHERE {COMPLETED_ONLY} AND completed_at >= {{since}} "
    "GROUP BY priority"
)
_PG_SINCE = f"timezone('UTC', statement_timestamp()) - interval '{int(RECENT.total_seconds())} seconds'"


@dataclass(frozen=True)
class Pause:
    """A recorded pause: its queue, since when (the store's clock) and by whom."""

    queue: str
    paused_at: datetime
    paused_by: str


def pause(sessions: sessionmaker[Session], queue: str, by: str) -> tuple[Pause, bool]:
    """Record ``queue`` as paused; (the pause as recorded, whether this call recorded it).

    One statement that always answers the row, whatever races it: on PostgreSQL an upsert whose
    no-op update returns the row another transaction committed (a plain insert-or-ignore and a
    second read could miss it: a resume deleting it between the two was a 500); ``xmax = 0``
    marks a row this statement inserted. SQLite lets one transaction write at a time, and the
    insert takes that turn until commit, so its read after an ignored insert cannot miss.
    """
    with transaction(sessions) as session:
        dialect = session.get_bind().dialect.name
        values = {"queue": queue, "paused_at": clock.now_for_write(dialect), "paused_by": by}
        if dialect == "postgresql":
            statement = pg_insert(_PAUSES).values(values)
            row = session.execute(
                statement.on_conflict_do_update(
                    index_elements=["queue"], set_={"queue": statement.excluded.queue}
                ).returning(*_PAUSES.c, literal_column("xmax = 0").label("inserted"))
            ).one()
            return Pause(row.queue, row.paused_at, row.paused_by), bool(row.inserted)
        added = session.execute(
            sqlite_insert(_PAUSES)
            .values(values)
            .on_conflict_do_nothing(index_elements=["queue"])
            .returning(_PAUSES.c.queue)
        ).first()
        row = session.execute(select(_PAUSES).where(_PAUSES.c.queue == queue)).one()
    return Pause(row.queue, row.paused_at, row.paused_by), added is not None


def resume(sessions: sessionmaker[Session], queue: str) -> bool:
    """Remove ``queue``'s pause; whether it was paused."""
    with transaction(sessions) as session:
        return bool(session.execute(delete(_PAUSES).where(_PAUSES.c.queue == queue)).rowcount)


def paused(sessions: sessionmaker[Session]) -> dict[str, Pause]:
    """Every recorded pause, by queue."""
    with sessions() as session:
        return {row.queue: Pause(row.queue, row.paused_at, row.paused_by) for row in session.execute(select(_PAUSES))}


def completed_recently(sessions: sessionmaker[Session]) -> dict[str, int]:
    """Per queue (a job's priority), the jobs COMPLETED in the last minute by the store's clock:
    one statement, a range of the partial index ``ix_jobs_completed`` (read alone on SQLite).

    The predicate is written as the index's, since a partial index serves a query only when the
    query states it. SQLite is told the index (``INDEXED BY``): without statistics its planner
    prefers ``status = ?`` on ``ix_jobs_status_created`` and walks every COMPLETED job; told, it
    cannot silently fall back (a statement the index cannot serve fails to prepare).
    """
    with sessions() as session:
        if session.get_bind().dialect.name == "postgresql":
            statement = text(_RECENT.format(index="", since=_PG_SINCE))
        else:
            statement = text(_RECENT.format(index=" INDEXED BY ix_jobs_completed", since=":since"))
            statement = statement.bindparams(bindparam("since", utcnow() - RECENT, type_=UTCDateTime()))
        return {priority: int(count) for priority, count in session.execute(statement)}
