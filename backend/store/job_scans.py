"""The scans of live jobs that recovery runs: the reconciler's pass and ``cleanup``'s cut-off.

Both read, never write: every change they decide goes through the job commands, and so
through the state machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Row, bindparam, select
from sqlalchemy.orm import Session, sessionmaker

from backend.core.states import LIVE_VALUES, TERMINAL_VALUES
from backend.store.models import Job

# Only what a verdict needs: a backlog of many thousand queued jobs is read on each pass.
_LIVE = select(Job.id, Job.status, Job.attempt, Job.worker, Job.rq_job_id, Job.depends_on).where(
    Job.status.in_(LIVE_VALUES), Job.updated_at < bindparam("cutoff")
)


def live_rows(sessions: sessionmaker[Session], cutoff: datetime) -> Sequence[Row]:
    """Live jobs last changed before ``cutoff``: id, status, attempt, worker, rq_job_id, depends_on."""
    with sessions() as session:
        return list(session.execute(_LIVE, {"cutoff": cutoff}))


def live_jobs_before(sessions: sessionmaker[Session], cutoff: datetime) -> list[Job]:
    """Live jobs last changed before ``cutoff``, whole (``cleanup`` reports and ends them)."""
    with sessions() as session:
        return list(session.scalars(select(Job).where(Job.status.in_(LIVE_VALUES), Job.updated_at < cutoff)))


def ended_ids(sessions: sessionmaker[Session], job_ids: set[str]) -> set[str]:
    """Which of ``job_ids`` have ended (the parents of jobs RQ still defers)."""
    if not job_ids:
        return set()
    with sessions() as session:
        return set(session.scalars(select(Job.id).where(Job.id.in_(job_ids), Job.status.in_(TERMINAL_VALUES))))
