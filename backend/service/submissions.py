"""Submitting jobs: recording what a client asked for (a ``JobRequest``) and putting it on a queue.

``Submissions`` is the part of ``JobManager`` that creates jobs and enqueues them; it calls
the parts for attempts (``_finish``) and dependencies (``_cancel_for_dependency``) when a job
cannot be enqueued. Every write runs as a unit that ``backend.store.conflicts`` runs again after
a deadlock; Redis is called before or after such a unit, never inside it.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from datetime import datetime

from backend.broker.errors import BrokerError
from backend.broker.queues import QueueAdapter, rq_job_id
from backend.core.errors import NotFound, StaleAttempt, ValidationFailed
from backend.core.logs import job_fields
from backend.core.states import TERMINAL_VALUES, UNSUCCESSFUL, JobStatus
from backend.service.idempotency import check_same_request
from backend.service.job_request import JobRequest
from backend.service.transitions import CAS_ATTEMPTS, load_job, queue_many, transition
from backend.store import clock, conflicts
from backend.store.errors import ConstraintViolated
from backend.store.job_inserts import NewJob, insert_new_job
from backend.store.jobs import JobRows, Sessions
from backend.store.models import Job, utcnow
from backend.tasks import TaskSpec, get_task

log = logging.getLogger(__name__)


def new_job_id() -> str:
    return f"job_{uuid.uuid4().hex}"


class Submissions:
    """Creating jobs and putting them on RQ's queues (a part of ``JobManager``)."""

    sessions: Sessions
    queues: QueueAdapter

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
            # The job's stamp is the database's time of a moment ago (``JobRows.add_job``).
            self._send(job, request.task, [], now=job.created_at, fresh=True)
        except BrokerError as exc:
            log.warning("job %s recorded QUEUED, but Redis refused it (%s): the reconciler requeues it", job.id, exc)
        return job, True

    def build_job(
        self, request: JobRequest, *, owner: str, status: JobStatus = JobStatus.PENDING, kind=Job, **origin
    ) -> Job:
        """A new job row for ``request``, PENDING unless told (not yet added to any session);
        ``kind``: ``Job``, or ``NewJob`` for ``insert_new_job``."""
        job_id = new_job_id()
        now = utcnow()
        return kind(
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
            max_interruptions=request.max_interruptions,
            max_snoozes=request.max_snoozes,
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
        self,
        session,
        request: JobRequest,
        *,
        owner: str,
        status: JobStatus = JobStatus.PENDING,
        mark_parents: bool = True,
        **origin,
    ) -> Job:
        """Add a new job and its dependency edges to ``session`` (the caller commits).

        Args:
            session: a store session (as ``backend.store.engine.transaction`` gives) or its
                ``JobRows``.
            mark_parents: see ``JobRows.add_job`` (False: the caller marks the parents of many).

        Raises:
            ValidationFailed: a job it depends on does not exist or is not the owner's.
        """
        rows = session if isinstance(session, JobRows) else JobRows(session)
        job = self.build_job(request, owner=owner, status=status, **origin)
        if request.depends_on:
            missing = sorted(set(request.depends_on) - rows.owned_ids(request.depends_on, owner=owner))
            if missing:
                raise ValidationFailed(f"depends_on names jobs that do not exist: {missing}")
        rows.add_job(job, mark_parents=mark_parents)
        return job

    def create_job(
        self, request: JobRequest, *, owner: str, status: JobStatus = JobStatus.PENDING, **origin
    ) -> tuple[Job, bool]:
        """Record a job (PENDING unless told); with an idempotency key held by a live job, return that job.

        The unique index on (owner, idempotency_key) decides between concurrent submissions.

        Raises:
            IdempotencyKeyReused: the key's live job was recorded from another request (422).
        """
        for _ in range(CAS_ATTEMPTS):
            try:
                for run in conflicts.attempts():
                    if request.depends_on:
                        with run, JobRows.transaction(self.sessions) as rows:
                            job = self.add_job(rows, request, owner=owner, status=status, **origin)
                    else:
                        # The common case: prebuilt statements, no ORM session (one round trip on
                        # PostgreSQL), committed before anything is sent to Redis.
                        with run:
                            job = self.build_job(request, owner=owner, status=status, kind=NewJob, **origin)
                            insert_new_job(self.sessions, job)
                if log.isEnabledFor(logging.INFO):  # its fields are built only for a line written
                    log.info(
                        "job %s recorded: task=%s owner=%s", job.id, request.task.name, owner, extra=job_fields(job)
                    )
                return job, True
            except ConstraintViolated:
                existing = self._live_job_with_key(owner, request.idempotency_key)
                if existing is not None:
                    check_same_request(existing, request)
                    log.info("job %s returned for idempotency key", existing.id)
                    return existing, False
        raise RuntimeError(f"could not record a job for idempotency key {request.idempotency_key!r}")

    def _live_job_with_key(self, owner: str, key: str | None) -> Job | None:
        if key is None:
            return None
        with JobRows.opened(self.sessions) as rows:
            return rows.live_with_key(owner, key)

    def enqueue_job(self, job_id: str) -> Job:
        """Put a PENDING job's current attempt on its queue and mark it QUEUED.

        A job with unfinished dependencies waits in RQ's deferred registry; one whose
        dependency failed is cancelled (unless it allows failure); a job with a ``run_at`` or
        a retry time waits in RQ's scheduler. When Redis is unreachable the job stays PENDING
        (the reconciler enqueues it later).

        Reads without locking, calls Redis, then writes QUEUED in a transaction of its own (the
        unit run again after a deadlock): no connection is held while Redis answers.
        """
        with JobRows.opened(self.sessions) as rows:
            job = load_job(rows, job_id)
            if job.status != JobStatus.PENDING:
                return job
            # Only a job that waits for a time compares it with the database's (a round trip on
            # PostgreSQL; none on SQLite, none for the others).
            now = clock.now(rows.session) if job.run_at is not None or job.next_retry_at is not None else None
            try:
                spec = get_task(job.task)
            except NotFound:
                rows.close()
                return self._finish(job.id, job.attempt, JobStatus.FAILED, error=f"no task named {job.task!r} any more")
            waiting_on: list[str] = []
            if job.depends_on:
                parents = rows.jobs(job.depends_on)
                failed = [p for p in parents if p.status in UNSUCCESSFUL]
                if failed and not job.allow_failure:
                    rows.close()
                    return self._cancel_for_dependency(job.id, failed[0])
                waiting_on = [p.rq_job_id for p in parents if p.status not in TERMINAL_VALUES]
        try:
            self._send(job, spec, waiting_on, now=now)
        except BrokerError as exc:
            log.warning("job %s stays PENDING: Redis unavailable (%s)", job.id, exc)
            return job
        sent = job.attempt
        for run in conflicts.attempts():
            with run, JobRows.transaction(self.sessions) as rows:
                job = load_job(rows, job_id)
                # A fast worker may already have started it (QUEUED is then in the past), or even
                # failed it into a new attempt: either way the job is where it should be.
                with contextlib.suppress(StaleAttempt):  # nothing was written: the job as read
                    transition(rows, job, JobStatus.QUEUED, attempt=sent, tolerate_behind=True)
        return job

    #: How many jobs ``enqueue_jobs`` moves to QUEUED per transaction: SQLite's one writer is
    #: held for one chunk at a time, not for a whole batch.
    QUEUED_CHUNK = 200

    def enqueue_jobs(self, job_ids: list[str]) -> None:
        """``enqueue_job`` for many jobs (a batch's), pushed in ``job_ids``' order.

        The jobs are read in one query. Those that go on their queue at once (PENDING, no
        parents, no time to wait for, no concurrency limit) are sent to Redis together
        (``QueueAdapter.enqueue_many``: three round trips for each run of them between two others,
        so that the order holds) and moved to QUEUED by one statement per ``QUEUED_CHUNK`` jobs
        (``queue_many``); any other goes through ``enqueue_job``. When Redis is unreachable they
        stay PENDING, for the reconciler.
        """
        with JobRows.opened(self.sessions) as rows:
            read = {job.id: job for job in rows.jobs(job_ids)}
        run: list[tuple[Job, dict]] = []  # the plain jobs since the last other one
        for job in (read[job_id] for job_id in job_ids if job_id in read):
            try:
                spec = get_task(job.task)
            except NotFound:
                spec = None  # enqueue_job fails it
            if spec is None or spec.concurrency or not self._goes_at_once(job):
                self._enqueue_together(run)  # first: the jobs before it keep their place
                run = []
                self.enqueue_job(job.id)
                continue
            attempt = {
                "job_id": job.id, "attempt": job.attempt, "func_path": spec.path, "args": job.args,
                "kwargs": job.kwargs, "priority": job.priority, "timeout": job.timeout, "owner": job.owner,
                "rate": spec.recorded_rate(job.args, job.kwargs),
            }  # fmt: skip
            run.append((job, attempt))
        self._enqueue_together(run)

    def _enqueue_together(self, run: list[tuple[Job, dict]]) -> None:
        """Push the PENDING jobs of ``run`` (each with ``enqueue_many``'s keywords) and move them
        to QUEUED; left PENDING, for the reconciler, when Redis is unreachable."""
        if not run:
            return
        try:
            self.queues.enqueue_many([attempt for _, attempt in run])
        except BrokerError as exc:
            log.warning("%s jobs stay PENDING: Redis unavailable (%s)", len(run), exc)
            return
        groups: dict[tuple[str, int], list[str]] = {}
        for job, _ in run:
            groups.setdefault((job.task, job.attempt), []).append(job.id)
        for (task, attempt), ids in groups.items():
            for start in range(0, len(ids), self.QUEUED_CHUNK):
                for retry in conflicts.attempts():
                    with retry, JobRows.transaction(self.sessions) as rows:
                        queue_many(rows, ids[start : start + self.QUEUED_CHUNK], task=task, attempt=attempt)

    @staticmethod
    def _goes_at_once(job: Job) -> bool:
        """A PENDING job with no parents and no time to wait for: pushed to its queue's tail at once."""
        return (
            job.status == JobStatus.PENDING and not job.depends_on and job.run_at is None and job.next_retry_at is None
        )

    def _send(
        self, job: Job, spec: TaskSpec, waiting_on: list[str], *, now: datetime | None = None, fresh: bool = False
    ) -> None:
        """Put the job's attempt on its queue (in RQ's scheduler while its run_at or retry time is ahead).

        ``now``: the database's time where the caller has it, since another host's clock may
        differ (None: this host's). ``fresh``: a job recorded QUEUED by this call, whose first
        attempt nothing else enqueues (``QueueAdapter.enqueue``: no look for its hash first).
        """
        now = now or utcnow()
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
            owner=job.owner,
            rate=spec.recorded_rate(job.args, job.kwargs),
            fresh=fresh,
        )
