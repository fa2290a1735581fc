"""JobManager: every read and write of jobs in the store goes through here.

Every change of a job's status goes through ``_transition``, which enforces the state machine
of ``backend.core.states`` and the attempt fence, and writes with a compare-and-set
(``UPDATE ... WHERE status = :seen AND attempt = :seen``) so that two writers racing on
one job can never both win.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from redis.exceptions import RedisError
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from backend.broker.queues import QueueAdapter, rq_job_id
from backend.core.errors import (
    Conflict,
    InvalidTransition,
    JobServiceError,
    NotFound,
    ServiceUnavailable,
    StaleAttempt,
    ValidationFailed,
)
from backend.core.logs import job_fields
from backend.core.states import AUTO_RETRY_FROM, MANUAL_RETRY_FROM, REQUEUE_FROM, TERMINAL, JobStatus, is_forward
from backend.service.idempotency import check_same_request
from backend.service.representations import iso
from backend.service.retries import RetryPolicy
from backend.store import counts
from backend.store.engine import transaction
from backend.store.models import Attempt, Batch, Job, JobDependency, utcnow
from backend.tasks import TaskSpec, get_task
from backend.webhooks import outbox as webhook_outbox

log = logging.getLogger(__name__)

_CAS_ATTEMPTS = 5


@dataclass(frozen=True)
class JobRequest:
    """What a client asked for, already validated (see backend.api.payloads)."""

    task: TaskSpec
    args: list
    kwargs: dict
    priority: str
    timeout: int
    max_retries: int
    webhook_url: str | None = None
    idempotency_key: str | None = None
    depends_on: tuple[str, ...] = ()
    allow_failure: bool = False
    run_at: datetime | None = None


def new_job_id() -> str:
    return f"job_{uuid.uuid4().hex}"


class JobManager:
    """Owns the jobs in the store and their way onto RQ's queues."""

    def __init__(self, sessions: sessionmaker[Session], queues: QueueAdapter, *, retry_policy: RetryPolicy):
        self.sessions = sessions
        self.queues = queues
        self.retry_policy = retry_policy

    # -- creating -----------------------------------------------------------------------

    def submit(self, request: JobRequest, *, owner: str) -> tuple[Job, bool]:
        """Record a job and put it on its queue.

        While Redis is answering, a job with no dependencies is recorded QUEUED and then put on
        its queue: one write to the store, and no worker can see it before its row exists.
        Should the enqueue fail, or the API die before it, the job stays QUEUED (a status never
        goes back) and the reconciler, finding no RQ job for it, queues a new attempt once Redis
        is back. Otherwise (Redis silent for a while, or dependencies to wait for) the job is
        recorded PENDING and then enqueued (``enqueue_job``): while Redis is down, submissions
        are PENDING until the reconciler enqueues them.

        Returns:
            The job, and False when an idempotency key matched a live job (nothing new).
        """
        straight = not request.depends_on and self.queues.recently_up
        status = JobStatus.QUEUED if straight else JobStatus.PENDING
        job, created = self.create_job(request, owner=owner, status=status)
        if not created:
            return job, False
        if not straight:
            return self.enqueue_job(job.id), True
        try:
            self._send(job, request.task, [])
        except RedisError as exc:
            log.warning("job %s recorded QUEUED, but Redis refused it (%s): the reconciler requeues it", job.id, exc)
        return job, True

    def build_job(self, request: JobRequest, *, owner: str, status: JobStatus = JobStatus.PENDING, **origin) -> Job:
        """A new job row for ``request``, PENDING unless told (not yet added to any session)."""
        job_id = new_job_id()
        now = utcnow()
        return Job(
            id=job_id,
            owner=owner,
            task=request.task.name,
            status=status.value,
            priority=request.priority,
            args=request.args,
            kwargs=request.kwargs,
            progress=0,
            created_at=now,
            updated_at=now,
            attempt=1,
            retry_count=0,
            max_retries=request.max_retries,
            timeout=request.timeout,
            webhook_url=request.webhook_url,
            rq_job_id=rq_job_id(job_id, 1),
            idempotency_key=request.idempotency_key,
            depends_on=list(request.depends_on) or None,
            allow_failure=request.allow_failure,
            run_at=request.run_at,
            **origin,
        )

    def add_job(
        self, session: Session, request: JobRequest, *, owner: str, status: JobStatus = JobStatus.PENDING, **origin
    ) -> Job:
        """Add a new job and its dependency edges to ``session`` (the caller commits).

        Raises:
            ValidationFailed: a job it depends on does not exist or is not the owner's.
        """
        job = self.build_job(request, owner=owner, status=status, **origin)
        if request.depends_on:
            found = set(session.scalars(select(Job.id).where(Job.id.in_(request.depends_on), Job.owner == owner)))
            missing = sorted(set(request.depends_on) - found)
            if missing:
                raise ValidationFailed(f"depends_on names jobs that do not exist: {missing}")
        session.add(job)
        counts.bump(session, job.task, old=None, new=job.status)
        if request.depends_on:
            session.flush()
            session.add_all(JobDependency(job_id=job.id, depends_on_id=parent) for parent in request.depends_on)
            session.execute(
                update(Job)
                .where(Job.id.in_(request.depends_on), Job.has_dependants.is_(False))
                .values(has_dependants=True)
                .execution_options(synchronize_session=False)
            )
        return job

    def create_job(
        self, request: JobRequest, *, owner: str, status: JobStatus = JobStatus.PENDING, **origin
    ) -> tuple[Job, bool]:
        """Record a job (PENDING unless told); with an idempotency key held by a live job, return that job.

        The unique index on (owner, idempotency_key) decides between concurrent submissions.

        Raises:
            IdempotencyKeyReused: the key's live job was recorded from another request (422).
        """
        for _ in range(_CAS_ATTEMPTS):
            try:
                with transaction(self.sessions) as session:
                    job = self.add_job(session, request, owner=owner, status=status, **origin)
                log.info("job %s recorded: task=%s owner=%s", job.id, request.task.name, owner, extra=job_fields(job))
                return job, True
            except IntegrityError:
                existing = self._live_job_with_key(owner, request.idempotency_key)
                if existing is not None:
                    check_same_request(existing, request)
                    log.info("job %s returned for idempotency key", existing.id)
                    return existing, False
        raise RuntimeError(f"could not record a job for idempotency key {request.idempotency_key!r}")

    def create_batch(self, requests: list[JobRequest], *, owner: str) -> tuple[Batch, list[Job]]:
        """Record a batch and all its jobs in one transaction (all or none), then enqueue them.

        Unlike ``submit``, batch jobs are recorded PENDING: enqueueing a thousand takes long
        enough that jobs recorded QUEUED could look lost to the reconciler meanwhile.
        """
        now = utcnow()
        batch = Batch(id=f"bat_{uuid.uuid4().hex}", owner=owner, task=requests[0].task.name, size=len(requests),
                      created_at=now)  # fmt: skip
        with transaction(self.sessions) as session:
            session.add(batch)
            jobs = [self.add_job(session, request, owner=owner, batch_id=batch.id) for request in requests]
        log.info("batch %s recorded: %s jobs of %s", batch.id, len(jobs), batch.task)
        return batch, [self.enqueue_job(job.id) for job in jobs]

    def _live_job_with_key(self, owner: str, key: str | None) -> Job | None:
        if key is None:
            return None
        with self.sessions() as session:
            return session.scalars(select(Job).where(Job.owner == owner, Job.idempotency_key == key)).first()

    def enqueue_job(self, job_id: str) -> Job:
        """Put a PENDING job's current attempt on its queue and mark it QUEUED.

        A job with unfinished dependencies waits in RQ's deferred registry; one whose
        dependency failed is cancelled (unless it allows failure); a job with a ``run_at`` or
        a retry time waits in RQ's scheduler. When Redis is unreachable the job stays PENDING
        (the reconciler enqueues it later).
        """
        with self.sessions() as session:
            job = self._load(session, job_id)
            if job.status != JobStatus.PENDING:
                return job
            try:
                spec = get_task(job.task)
            except NotFound:
                session.close()
                return self._finish(job.id, job.attempt, JobStatus.FAILED, error=f"no task named {job.task!r} any more")
            waiting_on: list[str] = []
            if job.depends_on:
                parents = list(session.scalars(select(Job).where(Job.id.in_(job.depends_on))))
                failed = [p for p in parents if p.status in (JobStatus.FAILED, JobStatus.CANCELLED)]
                if failed and not job.allow_failure:
                    session.close()
                    return self._cancel_for_dependency(job.id, failed[0])
                waiting_on = [p.rq_job_id for p in parents if p.status not in TERMINAL]
            try:
                self._send(job, spec, waiting_on)
            except RedisError as exc:
                log.warning("job %s stays PENDING: Redis unavailable (%s)", job.id, exc)
                return job
            # A fast worker may already have started it (QUEUED is then in the past), or even
            # failed it into a new attempt: either way the job is where it should be.
            try:
                self._transition(session, job, JobStatus.QUEUED, attempt=job.attempt, tolerate_behind=True)
            except StaleAttempt:
                session.rollback()
                session.refresh(job)
            session.commit()
            return job

    def _send(self, job: Job, spec: TaskSpec, waiting_on: list[str]) -> None:
        now = utcnow()
        self.queues.enqueue(
            job_id=job.id,
            attempt=job.attempt,
            func_path=spec.path,
            args=job.args,
            kwargs=job.kwargs,
            priority=job.priority,
            timeout=job.timeout,
            at=max((t for t in (job.run_at, job.next_retry_at) if t is not None and t > now), default=None),
            depends_on=waiting_on,
            concurrency=(spec.name, spec.concurrency) if spec.concurrency else None,
        )

    def _cancel_for_dependency(self, job_id: str, parent: Job) -> Job:
        try:
            # Its RQ job waits in RQ's deferred registry, which never releases it once the
            # parent failed: no fence is needed to keep it from running.
            return self.cancel_job(
                job_id, owner=None, by="dependency", reason=f"dependency {parent.id} {parent.status}", fence=False
            )
        except InvalidTransition:
            return self.get_job(job_id)

    def _release_dependants(self, parent_id: str) -> None:
        """A job ended: cancel the jobs that needed it to succeed, or let them run."""
        with self.sessions() as session:
            parent = session.get(Job, parent_id)
            children = list(
                session.scalars(
                    select(Job)
                    .join(JobDependency, JobDependency.job_id == Job.id)
                    .where(JobDependency.depends_on_id == parent_id, Job.status.in_(_NOT_TERMINAL))
                )
            )
        for child in children:
            if parent.status != JobStatus.COMPLETED and not child.allow_failure:
                self._cancel_for_dependency(child.id, parent)
            elif not self.waiting_for(child):
                if child.status == JobStatus.PENDING:
                    self.enqueue_job(child.id)
                elif self.queues.discard_deferred(child.rq_job_id):
                    # RQ enqueues dependants when a parent's RQ job finishes; a parent that
                    # needed retries (a new RQ job) or failed with allow_failure is ours to do.
                    self._send(child, get_task(child.task), [])

    def waiting_for(self, job: Job) -> list[str]:
        """The jobs this one still waits for (its dependencies that have not ended)."""
        if not job.depends_on or job.status in TERMINAL:
            return []
        with self.sessions() as session:
            ended = set(
                session.scalars(select(Job.id).where(Job.id.in_(job.depends_on), Job.status.in_(_TERMINAL_VALUES)))
            )
        return [parent for parent in job.depends_on if parent not in ended]

    # -- reading ------------------------------------------------------------------------

    def get_job(self, job_id: str, *, owner: str | None = None) -> Job:
        """Return a read-only snapshot of a job (its row; the ``Job`` attributes); with
        ``owner``, only that owner's.

        The polling path: one prebuilt Core SELECT on a pooled connection, no ORM session.

        Raises:
            NotFound: no such job, or it belongs to someone else.
        """
        with self.sessions.kw["bind"].connect() as connection:
            job = connection.execute(_GET_JOB, {"id": job_id}).first()
        if job is None or (owner is not None and job.owner != owner):
            raise NotFound(f"no job {job_id!r}")
        return job

    def get_attempts(self, job_id: str, *, after: int = 0, limit: int | None = None) -> list[Attempt]:
        """A job's attempts in order, those numbered above ``after``, at most ``limit``."""
        query = select(Attempt).where(Attempt.job_id == job_id, Attempt.attempt > after).order_by(Attempt.attempt)
        if limit is not None:
            query = query.limit(limit)
        with self.sessions() as session:
            return list(session.scalars(query))

    def live_job_ids(
        self,
        *,
        owner: str | None,
        status: JobStatus | None,
        task: str | None,
        batch_id: str | None = None,
        limit: int | None = None,
    ) -> list[str]:
        """Ids of the live jobs matching the filter (for bulk cancel), oldest first, at most ``limit``."""
        query = filter_jobs(select(Job.id).where(Job.status.in_(_NOT_TERMINAL)), owner=owner, status=status, task=task)
        if batch_id is not None:
            query = query.where(Job.batch_id == batch_id)
        if limit is not None:
            query = query.order_by(Job.created_at, Job.id).limit(limit)
        with self.sessions() as session:
            return list(session.scalars(query))

    def cancel_many(self, job_ids: list[str], *, owner: str | None, by: str) -> tuple[list[str], list[dict]]:
        """Cancel the listed jobs; returns the ids cancelled and, for the others, why not.

        One query finds which of the ids exist (the owner's) and which of those are live: an
        unknown or ended job costs no further work, only a live one is cancelled (fenced and
        written one by one, as ``cancel_job`` does). The caller bounds how many ids one call takes.
        """
        wanted = list(dict.fromkeys(job_ids))
        query = filter_jobs(select(Job.id, Job.status).where(Job.id.in_(wanted)), owner=owner, status=None, task=None)
        with self.sessions() as session:
            found = dict(session.execute(query).all()) if wanted else {}
        cancelled: list[str] = []
        skipped: list[dict] = []
        for job_id in wanted:
            status = found.get(job_id)
            try:
                if status is None:
                    raise NotFound(f"no job {job_id!r}")
                if status in _TERMINAL_VALUES:
                    raise InvalidTransition(job_id, status, JobStatus.CANCELLED.value)
                self.cancel_job(job_id, owner=owner, by=by)
                cancelled.append(job_id)
            except JobServiceError as exc:
                skipped.append({"job_id": job_id, "reason": exc.code, "message": exc.message})
            except Exception:
                # One job's unforeseen failure must not abort the rest of the request (the ids
                # after it would be neither cancelled nor reported): it is logged and reported,
                # as cancelled if the store says so (the failure came after the write).
                log.exception("job %s: bulk cancel failed", job_id)
                if self._status_or_none(job_id, owner=owner) == JobStatus.CANCELLED.value:
                    cancelled.append(job_id)
                else:
                    skipped.append(
                        {"job_id": job_id, "reason": "cancel_failed", "message": "the cancel failed; try again"}
                    )
        return cancelled, skipped

    def _status_or_none(self, job_id: str, *, owner: str | None) -> str | None:
        """A job's status in the store, or None when it cannot be read (unknown or store error)."""
        try:
            with self.sessions() as session:
                return self._load(session, job_id, owner=owner).status
        except Exception:
            log.exception("job %s: status unreadable after a failed cancel", job_id)
            return None

    def batch_summary(self, batch_id: str, *, owner: str | None) -> dict:
        """A batch's counts by status and overall progress (ended jobs count as 100%).

        Raises:
            NotFound: no such batch, or not the owner's.
        """
        with self.sessions() as session:
            batch = session.get(Batch, batch_id)
            if batch is None or (owner is not None and batch.owner != owner):
                raise NotFound(f"no batch {batch_id!r}")
            rows = session.execute(
                select(Job.status, func.count(), func.sum(Job.progress))
                .where(Job.batch_id == batch_id)
                .group_by(Job.status)
            ).all()
        counts = {status.value: 0 for status in JobStatus}
        progress_sum = 0
        for status, count, progress in rows:
            counts[status] = count
            progress_sum += 100 * count if status in _TERMINAL_VALUES else int(progress or 0)
        ended = sum(counts[s] for s in _TERMINAL_VALUES)
        return {
            "batch_id": batch.id,
            "task": batch.task,
            "size": batch.size,
            "created_at": iso(batch.created_at),
            "counts": counts,
            "progress": round(progress_sum / batch.size, 1) if batch.size else 100.0,
            "done": ended == batch.size,
        }

    # -- worker reports -----------------------------------------------------------------

    # ``at``: when the worker says the event happened (default: now).

    def mark_started(self, job_id: str, *, attempt: int, worker: str, at: datetime | None = None) -> Job:
        with transaction(self.sessions) as session:
            job = self._load(session, job_id)
            now = at or utcnow()
            changed = self._transition(
                session, job, JobStatus.PROCESSING, attempt=attempt, started_at=now, worker=worker
            )
            if changed:
                session.add(Attempt(job_id=job_id, attempt=attempt, worker=worker, started_at=now))
                log.info("job %s attempt %s started on %s", job_id, attempt, worker, extra=job_fields(job))
            return job

    def update_job_progress(self, job_id: str, *, attempt: int, progress: int, message: str | None) -> Job:
        """Record progress of a running attempt (an unstarted one counts as started).

        Raises:
            InvalidTransition: the job already ended.
            StaleAttempt: the report is for an older attempt.
        """
        with transaction(self.sessions) as session:
            job = self._load(session, job_id)
            self._check_attempt(job, attempt)
            if JobStatus(job.status) in TERMINAL:
                raise InvalidTransition(job_id, job.status, JobStatus.PROCESSING.value, reason="job has ended")
            result = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.attempt == attempt, Job.status.in_(_NOT_TERMINAL))
                .values(progress=progress, progress_message=message, updated_at=utcnow())
            )
            if result.rowcount == 0:
                session.refresh(job)
                raise InvalidTransition(job_id, job.status, JobStatus.PROCESSING.value, reason="job has ended")
            session.refresh(job)
            return job

    def mark_completed(self, job_id: str, *, attempt: int, result: object, at: datetime | None = None) -> Job:
        # The errors of earlier attempts stay in their attempt rows.
        return self._finish(job_id, attempt, JobStatus.COMPLETED, at=at, result=result, progress=100, error=None)

    def mark_failed(
        self, job_id: str, *, attempt: int, error: str, backoff: bool = True, at: datetime | None = None
    ) -> Job:
        """Record a failed attempt: a new attempt when retries are left, else FAILED.

        Args:
            backoff: wait the policy's delay before the retry (False: retry at once, as for a
                job whose worker died under it).
        """
        with transaction(self.sessions) as session:
            job = self._load(session, job_id)
            self._check_attempt(job, attempt)
            current = JobStatus(job.status)
            if current in TERMINAL or job.retry_count >= job.max_retries:
                retried = False
            else:
                retry_number = job.retry_count + 1
                retry_at = utcnow() + self.retry_policy.delay(retry_number) if backoff else None
                retried = self._new_attempt(
                    session, job, attempt, AUTO_RETRY_FROM, retry_count=retry_number, next_retry_at=retry_at,
                    error=error,
                )  # fmt: skip
                if retried:
                    self._end_attempt(session, job_id, attempt, JobStatus.FAILED, error, at or utcnow())
                    log.info(
                        "job %s attempt %s failed; retry %s at %s", job_id, attempt, retry_number, retry_at or "once"
                    )
        if retried:
            return self.enqueue_job(job_id)
        return self._finish(job_id, attempt, JobStatus.FAILED, at=at, error=error)

    def end_job(self, job_id: str, *, error: str) -> Job:
        """End a live job as FAILED now, retries or not (maintenance)."""
        with self.sessions() as session:
            job = self._load(session, job_id)
        return self._finish(job_id, job.attempt, JobStatus.FAILED, error=error)

    def retry_job(self, job_id: str, *, owner: str | None = None, max_attempts: int | None = None) -> Job:
        """Run a FAILED or CANCELLED job again, as a new attempt (``POST /jobs/<id>/retry``).

        ``max_attempts`` (``MAX_ATTEMPTS_PER_JOB`` for clients): a job that has had so many
        attempts is not retried by hand again. Every attempt keeps a row (its error up to
        ``MAX_ERROR_BYTES``), so without it a loop of retries grew a job's history without end.

        Raises:
            InvalidTransition: the job has not ended, or it COMPLETED.
            Conflict: the job has had ``max_attempts`` attempts already (409).
        """
        with transaction(self.sessions) as session:
            job = self._load(session, job_id, owner=owner)
            if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
                raise InvalidTransition(
                    job_id, job.status, JobStatus.PENDING.value, reason="only FAILED or CANCELLED jobs can be retried"
                )
            if max_attempts is not None and job.attempt >= max_attempts:
                raise Conflict(
                    f"job {job_id} has had {job.attempt} attempts, the most a job may have by retries "
                    f"(MAX_ATTEMPTS_PER_JOB={max_attempts}); submit it as a new job",
                    details={"setting": "MAX_ATTEMPTS_PER_JOB", "limit": max_attempts, "attempt": job.attempt},
                )
            self._new_attempt(
                session, job, job.attempt, MANUAL_RETRY_FROM,
                next_retry_at=None, cancelled_by=None, cancelled_at=None, error=None,
            )  # fmt: skip
        return self.enqueue_job(job_id)

    def requeue_lost(self, job_id: str, *, attempt: int, reason: str) -> Job:
        """Start a new attempt of a job that Redis lost before any worker ran it.

        The old attempt is fenced first, so a worker that popped it but had not started it
        never runs it (a RedisError here leaves the job as it was, for the next pass).
        """
        self.queues.fence(rq_job_id(job_id, attempt))
        with transaction(self.sessions) as session:
            job = self._load(session, job_id)
            if not self._new_attempt(session, job, attempt, REQUEUE_FROM):
                return job
            log.warning("job %s attempt %s lost (%s); attempt %s queued", job_id, attempt, reason, job.attempt)
        return self.enqueue_job(job_id)

    def cancel_job(
        self, job_id: str, *, owner: str | None, by: str, reason: str | None = None, fence: bool = True
    ) -> Job:
        """Cancel a live job: it leaves its queue, or its worker is told to stop it.

        The attempt is fenced in Redis before the store says CANCELLED: a worker that takes it
        from then on does not run it, and one that already started it is seen as started and
        sent RQ's stop-job command. Without Redis nothing is cancelled (503): the store would
        say CANCELLED while a worker could still run the job. ``fence=False``: cancel in the
        store even so (a job that no worker can take anyway).

        Raises:
            InvalidTransition: the job already ended (409).
            ServiceUnavailable: Redis is unreachable (503).
        """
        for _ in range(_CAS_ATTEMPTS):
            with self.sessions() as session:
                seen = self._load(session, job_id, owner=owner)
            if JobStatus(seen.status) in TERMINAL:
                raise InvalidTransition(job_id, seen.status, JobStatus.CANCELLED.value)
            try:
                self.queues.fence(seen.rq_job_id)
            except RedisError as exc:
                if fence:
                    raise ServiceUnavailable("Redis is unreachable: the job cannot be stopped now") from exc
                log.warning("job %s: cancelled without a fence (%s)", job_id, exc)
            try:
                with transaction(self.sessions) as session:
                    job = self._load(session, job_id, owner=owner)
                    now = utcnow()
                    self._transition(
                        session, job, JobStatus.CANCELLED, attempt=seen.attempt, strict=True, error=reason,
                        cancelled_by=by, cancelled_at=now, completed_at=now, next_retry_at=None,
                    )  # fmt: skip
                    self._end_attempt(
                        session, job_id, job.attempt, JobStatus.CANCELLED, f"cancelled by {by}", now, only_open=True
                    )
            except StaleAttempt:
                continue  # a new attempt began meanwhile: fence that one instead
            break
        else:
            raise InvalidTransition(
                job_id, seen.status, JobStatus.CANCELLED.value, reason="too many concurrent changes"
            )
        log.info("job %s cancelled by %s", job_id, by)
        try:
            self.queues.cancel(job.rq_job_id)
        except RedisError as exc:
            # Fenced already: no worker will start it; the stop of a running one waits.
            log.warning("job %s: could not stop its RQ job %s: %s", job_id, job.rq_job_id, exc)
        if job.has_dependants:
            self._release_dependants(job_id)
        return job

    def _new_attempt(self, session: Session, job: Job, after: int, allowed_from: frozenset, **fields) -> bool:
        """Start attempt ``after + 1`` of ``job`` as PENDING: the only way a job goes back.

        Raises:
            StaleAttempt: the job is no longer on attempt ``after``.
            InvalidTransition: the job's status is not in ``allowed_from``.
        """
        attempt = after + 1
        return self._transition(
            session, job, JobStatus.PENDING, attempt=after, new_attempt_from=allowed_from,
            rq_job_id=rq_job_id(job.id, attempt), progress=0, progress_message=None, result=None,
            started_at=None, completed_at=None, worker=None, **fields,
        )  # fmt: skip

    def _finish(self, job_id: str, attempt: int, target: JobStatus, *, at: datetime | None = None, **fields) -> Job:
        with transaction(self.sessions) as session:
            job = self._load(session, job_id)
            now = at or utcnow()
            if job.started_at is not None and job.attempt == attempt:
                now = max(now, job.started_at)
            changed = self._transition(session, job, target, attempt=attempt, completed_at=now, **fields)
            if changed:
                self._end_attempt(session, job_id, attempt, target, fields.get("error"), now)
                log.info("job %s attempt %s %s", job_id, attempt, target.value, extra=job_fields(job))
        if changed and job.has_dependants:
            self._release_dependants(job_id)
        return job

    def _end_attempt(
        self, session, job_id, attempt, outcome: JobStatus, error, now: datetime, *, only_open: bool = False
    ) -> None:
        row = session.scalars(select(Attempt).where(Attempt.job_id == job_id, Attempt.attempt == attempt)).first()
        if row is None and only_open:
            return
        if row is None:
            row = Attempt(job_id=job_id, attempt=attempt, started_at=None)
            session.add(row)
        # Event times come from workers' clocks: an attempt never ends before it started.
        row.ended_at = max(now, row.started_at) if row.started_at is not None else now
        row.outcome = outcome.value
        row.error = error

    # -- the state machine --------------------------------------------------------------

    def _check_attempt(self, job: Job, attempt: int | None) -> None:
        if attempt is not None and attempt != job.attempt:
            raise StaleAttempt(job.id, attempt, job.attempt)

    def _transition(
        self,
        session: Session,
        job: Job,
        target: JobStatus,
        *,
        attempt: int | None,
        new_attempt_from: frozenset | None = None,
        tolerate_behind: bool = False,
        strict: bool = False,
        **fields,
    ) -> bool:
        """Move ``job`` to ``target``: the one place a job's status is written.

        Args:
            attempt: the attempt the caller acts for; None for the API's own moves.
            new_attempt_from: start attempt ``job.attempt + 1`` instead of moving forward,
                from one of these statuses.
            tolerate_behind: a job already past ``target`` is left as it is, without error.
            strict: a job already at ``target`` is an error too (a client asking twice).

        Returns:
            True when the job changed; False for a repeated move (already at ``target``).

        Raises:
            StaleAttempt: ``attempt`` is not the job's current attempt.
            InvalidTransition: the move is backwards or out of a terminal status.
        """
        for _ in range(_CAS_ATTEMPTS):
            self._check_attempt(job, attempt)
            current = JobStatus(job.status)
            if new_attempt_from is not None:
                if current not in new_attempt_from:
                    raise InvalidTransition(job.id, current.value, target.value, reason="cannot start a new attempt")
            elif current == target and not strict:
                return False
            elif current == target or not is_forward(current, target):
                if tolerate_behind:
                    return False
                raise InvalidTransition(job.id, current.value, target.value)
            values = dict(fields, status=target.value, updated_at=utcnow())
            if new_attempt_from is not None:
                values["attempt"] = job.attempt + 1
            if target in TERMINAL:
                # An ended job frees its idempotency key: a dead job never blocks new work.
                values["idempotency_key"] = None
            result = session.execute(
                update(Job)
                .where(Job.id == job.id, Job.status == job.status, Job.attempt == job.attempt)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            old_status = job.status
            session.refresh(job)
            if result.rowcount == 1:
                if old_status != job.status:
                    counts.bump(session, job.task, old=old_status, new=job.status)
                if target in TERMINAL and job.webhook_url:
                    webhook_outbox.add_delivery(session, job)
                return True
            # Someone else moved the job between our read and our write: decide again.
        raise InvalidTransition(job.id, job.status, target.value, reason="too many concurrent changes")

    def _load(self, session: Session, job_id: str, *, owner: str | None = None) -> Job:
        job = session.get(Job, job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise NotFound(f"no job {job_id!r}")
        return job


_GET_JOB = select(Job.__table__).where(Job.__table__.c.id == bindparam("id"))
_NOT_TERMINAL = [status.value for status in JobStatus if status not in TERMINAL]
_TERMINAL_VALUES = [status.value for status in TERMINAL]


def filter_jobs(query, *, owner: str | None, status: JobStatus | None, task: str | None):
    """``query`` narrowed to an owner, a status and a task, where given."""
    if owner is not None:
        query = query.where(Job.owner == owner)
    if status is not None:
        query = query.where(Job.status == status.value)
    if task is not None:
        query = query.where(Job.task == task)
    return query
