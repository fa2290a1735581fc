"""Every statement the job commands run on jobs, attempts, batches and dependency edges.

``backend.service`` decides what happens to a job; this module is where it is read and
written. ``JobRows`` wraps one session (one transaction): the commands open one with
``JobRows.transaction`` (commits when the block ends) or ``JobRows.opened`` (the caller
commits, for a command that talks to Redis between its read and its write). The status write
is ``compare_and_set``: ``UPDATE ... WHERE status = :seen AND attempt = :seen``, so that two
writers racing on one job can never both win; the maintained counts move with it (a delta row,
``backend.store.counts``), and ``updated_at`` is the database's time (``clock.now_for_write``).

One lock order: a transaction that writes several existing jobs locks them in id order (the
parents marked by ``add_job``/``mark_parents``, the report batch path), and no shared counter row
is locked at all, so two transactions never wait for each other in a circle.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import Row, bindparam, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from backend.core.errors import NotFound
from backend.core.job_filters import indexed_kwargs
from backend.core.states import LIVE_VALUES, TERMINAL_VALUES, JobStatus
from backend.store import clock, counts
from backend.store.engine import transaction
from backend.store.models import Attempt, Batch, Job, JobDependency, JobKwarg

#: The factory of sessions the service objects are built with (``make_session_factory``).
Sessions = sessionmaker[Session]


# The polling path's statement, built once: building it cost as much as running it.
# Without the checkpoint (up to MAX_CHECKPOINT_BYTES, read only by its own route).
_GET_JOB = select(*(c for c in Job.__table__.c if c.name != "checkpoint")).where(Job.__table__.c.id == bindparam("id"))


def filter_jobs(query, *, owner: str | None, status: JobStatus | None, task: str | None):
    """``query`` narrowed to an owner, a status and a task, where given."""
    if owner is not None:
        query = query.where(Job.owner == owner)
    if status is not None:
        query = query.where(Job.status == status.value)
    if task is not None:
        query = query.where(Job.task == task)
    return query


def get_job_row(sessions: Sessions, job_id: str) -> Row | None:
    """A job's row (the ``Job`` attributes, read-only), or None.

    One prebuilt Core SELECT on a pooled connection, no ORM session: clients poll this.
    """
    with sessions.kw["bind"].connect() as connection:
        return connection.execute(_GET_JOB, {"id": job_id}).first()


class JobRows:
    """The job commands' statements, run on one session."""

    def __init__(self, session: Session):
        self.session = session
        # The database's time for the jobs this transaction adds: read once (one round trip for a
        # batch of a thousand), on PostgreSQL only (``add_job``).
        self._created_at: datetime | None = None

    @classmethod
    @contextmanager
    def transaction(cls, sessions: Sessions) -> Iterator[JobRows]:
        """Rows on a new session that commits when the block ends and rolls back when it raises."""
        with transaction(sessions) as session:
            yield cls(session)

    @classmethod
    @contextmanager
    def opened(cls, sessions: Sessions) -> Iterator[JobRows]:
        """Rows on a new session that the caller commits (``commit``); closed when the block ends."""
        with sessions() as session:
            yield cls(session)

    def commit(self) -> None:
        self.session.commit()

    def rollback(self) -> None:
        self.session.rollback()

    def close(self) -> None:
        """Give the connection back before a long call (the session opens a new one if used again)."""
        self.session.close()

    def refresh(self, row) -> None:
        """Read ``row`` again from the store (after a write that did not go through the ORM)."""
        self.session.refresh(row)

    # -- jobs -----------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        return self.session.get(Job, job_id)

    def jobs(self, job_ids: list[str], *, owner: str | None = None) -> list[Job]:
        """The jobs of ``job_ids`` that exist (with ``owner``, only that owner's)."""
        query = select(Job).where(Job.id.in_(job_ids))
        return list(self.session.scalars(query if owner is None else query.where(Job.owner == owner)))

    def owned_ids(self, job_ids: list[str] | tuple[str, ...], *, owner: str) -> set[str]:
        """Which of ``job_ids`` exist and are ``owner``'s."""
        return set(self.session.scalars(select(Job.id).where(Job.id.in_(job_ids), Job.owner == owner)))

    def live_with_key(self, owner: str, key: str) -> Job | None:
        """The job holding ``owner``'s idempotency key (only live jobs hold one)."""
        return self.session.scalars(select(Job).where(Job.owner == owner, Job.idempotency_key == key)).first()

    def statuses(self, job_ids: list[str], *, owner: str | None) -> dict[str, str]:
        """The status of each of ``job_ids`` that exists (and is ``owner``'s), by id."""
        if not job_ids:
            return {}
        query = filter_jobs(select(Job.id, Job.status).where(Job.id.in_(job_ids)), owner=owner, status=None, task=None)
        return dict(self.session.execute(query).all())

    def live_ids(
        self,
        *,
        owner: str | None,
        status: JobStatus | None,
        task: str | None,
        batch_id: str | None,
        limit: int | None,
    ) -> list[str]:
        """Ids of the live jobs matching the filter, oldest first when ``limit`` is given."""
        query = filter_jobs(select(Job.id).where(Job.status.in_(LIVE_VALUES)), owner=owner, status=status, task=task)
        if batch_id is not None:
            query = query.where(Job.batch_id == batch_id)
        if limit is not None:
            query = query.order_by(Job.created_at, Job.id).limit(limit)
        return list(self.session.scalars(query))

    def add_job(self, job: Job, *, mark_parents: bool = True) -> None:
        """Add a new job, its count, and its dependency edges (from ``job.depends_on``).

        Args:
            mark_parents: mark the parents as having dependants now; False for a caller adding
                many jobs, which marks all their parents at once (``mark_parents``), in id order.
        """
        if self.session.get_bind().dialect.name == "postgresql":
            # The database's time, not the submitting host's: the reconciler, maybe on another
            # host, compares updated_at with the database's clock (a job from a host an hour
            # ahead was invisible to it for that hour). SQLite lives on one host: its stamp stays.
            if self._created_at is None:
                self._created_at = clock.now(self.session)
            job.created_at = job.updated_at = self._created_at
        self.session.add(job)
        pairs = indexed_kwargs(job.kwargs)
        if pairs:
            # The search index of its kwargs, in the same flush as the job (one executemany).
            self.session.add_all(
                JobKwarg(job_id=job.id, owner=job.owner, name=name, value=value, created_at=job.created_at)
                for name, value in pairs
            )
        counts.bump(self.session, job.task, old=None, new=job.status)
        if job.depends_on:
            # The edges reference the new row: it must be in the store first.
            self.session.flush()
            parents = sorted(set(job.depends_on))
            self.session.add_all(JobDependency(job_id=job.id, depends_on_id=parent) for parent in parents)
            if mark_parents:
                self.mark_parents(parents)

    def mark_parents(self, parent_ids) -> None:
        """Mark jobs as having dependants, locking their rows in id order (the one lock order)."""
        if not parent_ids:
            return
        # FOR NO KEY UPDATE, ordered: the rows are locked in id order, and without blocking the
        # edges' foreign-key checks (KEY SHARE) of other submissions naming the same parents.
        unmarked = (
            select(Job.id)
            .where(Job.id.in_(sorted(set(parent_ids))), Job.has_dependants.is_(False))
            .order_by(Job.id)
            .with_for_update(key_share=True)
        )
        self.session.execute(
            update(Job)
            .where(Job.id.in_(unmarked.scalar_subquery()))
            .values(has_dependants=True)
            .execution_options(synchronize_session=False)
        )

    def compare_and_set(self, job: Job, values: dict) -> bool:
        """Write ``values`` to ``job`` if its status and attempt are still those read; ``job`` is
        read again either way. The job's count moves with its status.

        Returns:
            True when this write won; False when another writer changed the job first.

        Raises:
            NotFound: the job was deleted (pruned) since it was read.
        """
        # The database's time: the reconciler, maybe on another host, compares it with its own.
        values = dict(values, updated_at=clock.now_for_write(self.session.get_bind().dialect.name))
        result = self.session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == job.status, Job.attempt == job.attempt)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        old_status = job.status
        if result.rowcount != 1 and self.session.get(Job, job.id, populate_existing=True) is None:
            # Retention pruned the ended job between our read and this write: it is gone.
            raise NotFound(f"no job {job.id!r}")
        self.session.refresh(job)
        if result.rowcount != 1:
            return False
        if old_status != job.status:
            counts.bump(self.session, job.task, old=old_status, new=job.status)
        return True

    def move_many(self, job_ids: list[str], *, task: str, attempt: int, old: JobStatus, new: JobStatus) -> int:
        """Write ``new`` to those of ``job_ids`` (jobs of ``task``) still at ``old`` on ``attempt``,
        in one statement, leaving the others as they are; the count moves with them.

        Returns:
            How many moved.
        """
        now = clock.now_for_write(self.session.get_bind().dialect.name)
        result = self.session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.task == task, Job.status == old.value, Job.attempt == attempt)
            .values(status=new.value, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount:
            counts.bump(self.session, task, old=old.value, new=new.value, by=result.rowcount)
        return result.rowcount

    def set_progress(self, job_id: str, *, attempt: int, progress: int, message: str | None) -> bool:
        """Record progress on attempt ``attempt`` of a live job; False when it is no longer that.

        ``updated_at`` is the database's time; read the job again (``refresh``) to see it.
        """
        now = clock.now_for_write(self.session.get_bind().dialect.name)
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.attempt == attempt, Job.status.in_(LIVE_VALUES))
            .values(progress=progress, progress_message=message, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount != 0

    # -- dependencies ---------------------------------------------------------------

    def live_dependants(self, parent_id: str) -> list[Job]:
        """The live jobs that depend on ``parent_id``."""
        return list(
            self.session.scalars(
                select(Job)
                .join(JobDependency, JobDependency.job_id == Job.id)
                .where(JobDependency.depends_on_id == parent_id, Job.status.in_(LIVE_VALUES))
            )
        )

    def ended_ids(self, job_ids: list[str]) -> set[str]:
        """Which of ``job_ids`` have ended."""
        return set(self.session.scalars(select(Job.id).where(Job.id.in_(job_ids), Job.status.in_(TERMINAL_VALUES))))

    # -- attempts -------------------------------------------------------------------

    def attempts(self, job_id: str, *, after: int, limit: int | None) -> list[Attempt]:
        """A job's attempts in order, those numbered above ``after``, at most ``limit``."""
        query = select(Attempt).where(Attempt.job_id == job_id, Attempt.attempt > after).order_by(Attempt.attempt)
        if limit is not None:
            query = query.limit(limit)
        return list(self.session.scalars(query))

    def start_attempt(self, job_id: str, attempt: int, *, worker: str, started_at: datetime) -> None:
        self.session.add(Attempt(job_id=job_id, attempt=attempt, worker=worker, started_at=started_at))

    def end_attempt(
        self,
        job_id: str,
        attempt: int,
        outcome: JobStatus | str,
        error: str | None,
        now: datetime,
        *,
        only_open: bool = False,
    ) -> None:
        """Record how an attempt ended, adding its row if it never started (unless ``only_open``)."""
        row = self.session.scalars(select(Attempt).where(Attempt.job_id == job_id, Attempt.attempt == attempt)).first()
        if row is None and only_open:
            return
        if row is None:
            row = Attempt(job_id=job_id, attempt=attempt, started_at=None)
            self.session.add(row)
        # Event times come from workers' clocks: an attempt never ends before it started.
        row.ended_at = max(now, row.started_at) if row.started_at is not None else now
        row.outcome = outcome.value if isinstance(outcome, JobStatus) else outcome  # or INTERRUPTED
        row.error = error

    # -- batches --------------------------------------------------------------------

    def add_batch(self, batch: Batch) -> None:
        self.session.add(batch)

    def batch(self, batch_id: str) -> Batch | None:
        return self.session.get(Batch, batch_id)

    def batch_counts(self, batch_id: str) -> list[tuple[str, int, int | None]]:
        """(status, jobs, sum of their progress) for each status among a batch's jobs."""
        return [
            tuple(row)
            for row in self.session.execute(
                select(Job.status, func.count(), func.sum(Job.progress))
                .where(Job.batch_id == batch_id)
                .group_by(Job.status)
            )
        ]
