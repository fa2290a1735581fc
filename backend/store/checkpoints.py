"""Store: a job's checkpoint, the newest state its task saved for a later attempt.

Three columns of the job's row (``checkpoint``, ``checkpoint_attempt``, ``checkpoint_at``); the
state itself is read only here (the ORM defers it, the polling read leaves it out). A save is one
UPDATE that names the attempt and a live status, so a stale worker or an ended job writes nothing.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Row, bindparam, select, update
from sqlalchemy.orm import Session, sessionmaker

from backend.core.states import LIVE_VALUES
from backend.store import clock
from backend.store.engine import transaction
from backend.store.models import Job

_JOBS = Job.__table__
_READ = select(_JOBS.c.status, _JOBS.c.attempt, _JOBS.c.checkpoint, _JOBS.c.checkpoint_attempt, _JOBS.c.checkpoint_at)


def save(sessions: sessionmaker[Session], job_id: str, *, attempt: int, state: object) -> datetime | None:
    """Save ``state`` as the job's checkpoint if it is live and on ``attempt``; when (the
    database's time), or None when nothing was written (no such job, another attempt, ended)."""
    with transaction(sessions) as session:
        dialect = session.get_bind().dialect.name
        at = clock.now(session)
        written = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.attempt == attempt, Job.status.in_(LIVE_VALUES))
            .values(
                checkpoint=state,
                checkpoint_attempt=attempt,
                checkpoint_at=at,
                updated_at=clock.now_for_write(dialect),
            )
            .execution_options(synchronize_session=False)
        ).rowcount
    return at if written == 1 else None


def read(sessions: sessionmaker[Session], job_id: str) -> Row | None:
    """The job's ``(status, attempt, checkpoint, checkpoint_attempt, checkpoint_at)``, or None."""
    with sessions.kw["bind"].connect() as connection:
        return connection.execute(_READ.where(_JOBS.c.id == bindparam("id")), {"id": job_id}).first()
