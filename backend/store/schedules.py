"""Store: every statement on the ``scheduled_jobs`` and ``schedule_firings`` tables.

The rules (cron times, the missed policy, who may see which schedule) are
``backend.service.schedules``'s; this module only reads and writes rows. A firing is recorded
under a unique (schedule, due time) key, so the second of two schedulers racing for one due
time gets ``ConstraintViolated`` from ``record_firing`` and its transaction rolls back
(``lock_due`` lets it pass over a schedule another scheduler is firing before it gets there).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import datetime

from sqlalchemy import Row, and_, delete, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from backend.store.engine import transaction
from backend.store.models import Job, ScheduledJob, ScheduleFiring

#: Rows read from the store at a time while a page of GET /scheduled-jobs is built.
LIST_FETCH = 16


def insert_schedule(
    sessions: sessionmaker[Session], schedule: ScheduledJob, *, max_per_owner: int | None
) -> int | None:
    """Store a new schedule unless its owner holds ``max_per_owner`` already.

    Returns:
        None once stored; the number its owner holds when that is the cap (nothing stored).

    Raises:
        ConstraintViolated: the owner has a schedule of that name already.
    """
    with transaction(sessions) as session:
        if max_per_owner is not None:
            # Counted in the creating transaction; concurrent creations of one owner can pass
            # the cap by at most their number, which stays a bound.
            held = session.scalar(
                select(func.count()).select_from(ScheduledJob).where(ScheduledJob.owner == schedule.owner)
            )
            if held >= max_per_owner:
                return held
        session.add(schedule)
    return None


def get_schedule(sessions: sessionmaker[Session], schedule_id: str) -> ScheduledJob | None:
    with sessions() as session:
        return session.get(ScheduledJob, schedule_id)


def schedule_page(
    sessions: sessionmaker[Session],
    *,
    owner: str | None,
    after: tuple[datetime, str] | None,
    limit: int,
    omit: frozenset[str],
) -> Iterator[Row]:
    """Schedules oldest first, after ``after`` (the ``(created_at, id)`` of the last one seen),
    at most ``limit``; the columns named in ``omit`` are never read. Rows are read a few at a
    time, so a caller that stops early (and closes this generator) holds no more."""
    query = select(*(c for c in ScheduledJob.__table__.c if c.name not in omit))
    if owner is not None:
        query = query.where(ScheduledJob.owner == owner)
    if after is not None:
        created_at, last_id = after
        query = query.where(
            or_(
                ScheduledJob.created_at > created_at,
                and_(ScheduledJob.created_at == created_at, ScheduledJob.id > last_id),
            )
        )
    query = query.order_by(ScheduledJob.created_at, ScheduledJob.id).limit(limit)
    with sessions() as session:
        rows = session.execute(query, execution_options={"yield_per": LIST_FETCH})
        with contextlib.closing(rows):
            yield from rows


def update_schedule(
    sessions: sessionmaker[Session], schedule_id: str, change: Callable[[ScheduledJob | None], dict]
) -> ScheduledJob:
    """Read a schedule and write ``change(schedule)``'s column values to it, in one transaction.

    ``change`` sees the row as stored (None when there is none) and may raise to write nothing.

    Raises:
        ConstraintViolated: the new name is one of the owner's other schedules'.
        RowVanished: a concurrent DELETE removed it between the read and the write.
    """
    with transaction(sessions) as session:
        schedule = session.get(ScheduledJob, schedule_id)
        for key, value in change(schedule).items():
            setattr(schedule, key, value)
        session.flush()
    return schedule


def delete_schedule(
    sessions: sessionmaker[Session], schedule_id: str, check: Callable[[ScheduledJob | None], object]
) -> bool:
    """Delete a schedule once ``check`` (which may raise) has seen it; False when it was gone already."""
    with transaction(sessions) as session:
        check(session.get(ScheduledJob, schedule_id))
        # A Core DELETE that counts its rows: a concurrent DELETE that won leaves none.
        return bool(session.execute(delete(ScheduledJob).where(ScheduledJob.id == schedule_id)).rowcount)


def schedule_jobs(sessions: sessionmaker[Session], schedule_id: str, *, limit: int) -> list[Job]:
    """The jobs a schedule started, newest first."""
    with sessions() as session:
        return list(
            session.scalars(
                select(Job)
                .where(Job.schedule_id == schedule_id)
                .order_by(Job.created_at.desc(), Job.id.desc())
                .limit(limit)
            )
        )


def due_schedules(sessions: sessionmaker[Session], now: datetime) -> list[ScheduledJob]:
    """The enabled schedules whose next run is due at ``now``."""
    with sessions() as session:
        return list(
            session.scalars(select(ScheduledJob).where(ScheduledJob.enabled.is_(True), ScheduledJob.next_run_at <= now))
        )


def lock_due(session: Session, schedule_id: str, fire_at: datetime) -> bool:
    """In the caller's transaction: lock a schedule whose next run is still ``fire_at``, for its
    firing; False when another transaction holds it (another scheduler firing it) or it has
    moved on (fired, changed, disabled, deleted).

    On PostgreSQL the row is locked ``FOR NO KEY UPDATE SKIP LOCKED``: a racing scheduler passes
    over it at once, and inserts that refer to the schedule (its jobs, its firings) are not
    held up. On SQLite, whose writers take turns, it is a plain read; the unique firing row
    still makes the second of two racing firings fail.
    """
    return (
        session.scalar(
            select(ScheduledJob.id)
            .where(ScheduledJob.id == schedule_id, ScheduledJob.next_run_at == fire_at)
            .with_for_update(key_share=True, skip_locked=True)
        )
        is not None
    )


def record_firing(
    session: Session, *, schedule_id: str, fire_at: datetime, job_id: str, now: datetime, values: dict
) -> None:
    """In the caller's transaction (the one that added the job): record the firing of
    ``fire_at`` for the job, and write ``values`` to the schedule.

    Raises:
        ConstraintViolated: this due time fired already (another scheduler was first).
    """
    session.flush()  # the job's row first: the firing refers to it
    session.add(ScheduleFiring(schedule_id=schedule_id, fire_at=fire_at, job_id=job_id, created_at=now))
    session.execute(update(ScheduledJob).where(ScheduledJob.id == schedule_id).values(**values))


def advance_schedule(
    sessions: sessionmaker[Session], schedule_id: str, *, seen: datetime, next_run_at: datetime | None, now: datetime
) -> None:
    """Move a schedule's next run on from ``seen``, unless another scheduler did already."""
    with transaction(sessions) as session:
        session.execute(
            update(ScheduledJob)
            .where(ScheduledJob.id == schedule_id, ScheduledJob.next_run_at == seen)
            .values(next_run_at=next_run_at, updated_at=now)
        )
