"""The life of a job's attempts: started, progress, ended, and the next attempt.

``Attempts`` is the part of ``JobManager`` that records what workers report (through
``backend.service.worker_reports`` or the reconciler) and starts new attempts: an automatic
retry, a client's retry, a job Redis lost. Every attempt keeps a row in ``attempts``. A new
attempt is enqueued through the submissions part; an ended job's dependants are released
through the dependencies part.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from backend.broker.queues import QueueAdapter, rq_job_id
from backend.core import interruptions
from backend.core.errors import Conflict, InvalidTransition
from backend.core.logs import job_fields
from backend.core.long_tasks import SNOOZED_OUTCOME
from backend.core.states import AUTO_RETRY_FROM, MANUAL_RETRY_FROM, REQUEUE_FROM, TERMINAL_VALUES, JobStatus, decide
from backend.service.retries import RetryPolicy
from backend.service.transitions import check_attempt, load_job, new_attempt, transition
from backend.store import clock, conflicts
from backend.store.jobs import JobRows, Sessions
from backend.store.models import Job, utcnow

log = logging.getLogger(__name__)

#: How long a job whose start the store never confirmed waits for its next attempt: not at once,
#: so that a worker that cannot get an answer does not spin through attempts, and short, since
#: no run was cut (past the fences' window a new RQ job needs no answer anyway).
UNSTARTED_RETRY_SECONDS = 5.0


class Attempts:
    """Recording attempts and starting new ones (a part of ``JobManager``).

    ``at`` in the worker's events: when the worker says the event happened (default: now).
    """

    sessions: Sessions
    queues: QueueAdapter
    retry_policy: RetryPolicy
    #: ``MAX_ATTEMPTS_PER_JOB``: a snooze that would start an attempt past it ends the job (None: no cap).
    max_attempts: int | None = None

    def mark_started(self, job_id: str, *, attempt: int, worker: str, at: datetime | None = None) -> Job:
        for run in conflicts.attempts():
            with run, JobRows.transaction(self.sessions) as rows:
                job = load_job(rows, job_id)
                now = at or utcnow()
                changed = transition(rows, job, JobStatus.PROCESSING, attempt=attempt, started_at=now, worker=worker)
                if changed:
                    rows.start_attempt(job_id, attempt, worker=worker, started_at=now)
                    log.info("job %s attempt %s started on %s", job_id, attempt, worker, extra=job_fields(job))
                return job

    def update_job_progress(self, job_id: str, *, attempt: int, progress: int, message: str | None) -> Job:
        """Record progress of a running attempt (an unstarted one counts as started).

        Raises:
            InvalidTransition: the job already ended.
            StaleAttempt: the report is for an older attempt.
        """
        for run in conflicts.attempts():
            with run, JobRows.transaction(self.sessions) as rows:
                job = load_job(rows, job_id)
                # No status move (target None): allowed on the current attempt while the job is live.
                move = decide(job.status, job.attempt, None, attempt)
                if move.refused:
                    raise move.error(job_id)
                written = rows.set_progress(job_id, attempt=attempt, progress=progress, message=message)
                rows.refresh(job)
                if not written:
                    raise InvalidTransition(job_id, job.status, JobStatus.PROCESSING.value, reason="job has ended")
                return job

    def mark_completed(self, job_id: str, *, attempt: int, result: object, at: datetime | None = None) -> Job:
        # The errors of earlier attempts stay in their attempt rows.
        return self._finish(job_id, attempt, JobStatus.COMPLETED, at=at, result=result, progress=100, error=None)

    def mark_failed(
        self, job_id: str, *, attempt: int, error: str, backoff: bool = True, at: datetime | None = None
    ) -> Job:
        """Record a failed attempt: a new attempt when retries are left, else FAILED.

        Args:
            backoff: wait the policy's delay before the retry (False: retry at once).

        A run cut by the infrastructure is no failure: see ``mark_interrupted``.
        """
        for run in conflicts.attempts():
            with run, JobRows.transaction(self.sessions) as rows:
                job = load_job(rows, job_id)
                check_attempt(job, attempt)
                if job.status in TERMINAL_VALUES or job.retry_count >= job.max_retries:
                    retried = False
                else:
                    retry_number = job.retry_count + 1
                    # The database's time: the reconciler and enqueue_job, maybe on other hosts,
                    # compare next_retry_at with it (no extra query on SQLite).
                    retry_at = clock.now(rows.session) + self.retry_policy.delay(retry_number) if backoff else None
                    retried = new_attempt(
                        rows, job, attempt, AUTO_RETRY_FROM, retry_count=retry_number, next_retry_at=retry_at,
                        error=error,
                    )  # fmt: skip
                    if retried:
                        rows.end_attempt(job_id, attempt, JobStatus.FAILED, error, at or utcnow())
                        log.info(
                            "job %s attempt %s failed; retry %s at %s",
                            job_id,
                            attempt,
                            retry_number,
                            retry_at or "once",
                        )
        if retried:
            return self.enqueue_job(job_id)
        return self._finish(job_id, attempt, JobStatus.FAILED, at=at, error=error)

    def mark_interrupted(self, job_id: str, *, attempt: int, error: str, at: datetime | None = None) -> Job:
        """Record an attempt whose run the infrastructure cut: a new attempt at once, no retry spent.

        Such a run is no fault of its task (``backend.core.interruptions``): it is queued again
        without backoff, and ``retry_count`` stays. It counts in ``interruptions``; the one past
        ``max_interruptions`` ends the job FAILED instead (a job that keeps killing its workers).
        The attempt's outcome is ``INTERRUPTED`` either way.
        """
        for run in conflicts.attempts():
            with run, JobRows.transaction(self.sessions) as rows:
                job = load_job(rows, job_id)
                check_attempt(job, attempt)
                count = job.interruptions + 1
                limit = job.max_interruptions
                requeued = False
                if job.status not in TERMINAL_VALUES and count <= limit:
                    requeued = new_attempt(
                        rows, job, attempt, AUTO_RETRY_FROM, interruptions=count, next_retry_at=None, error=error
                    )
                    if requeued:
                        rows.end_attempt(job_id, attempt, interruptions.OUTCOME, error, at or utcnow())
                        log.warning(
                            "job %s attempt %s interrupted (%s of %s); attempt %s queued at once: %s",
                            job_id, attempt, count, limit, job.attempt, error,
                        )  # fmt: skip
        if requeued:
            return self.enqueue_job(job_id)
        if job.status in TERMINAL_VALUES:
            return self._finish(job_id, attempt, JobStatus.FAILED, at=at, error=error)  # refused or a repeat
        return self._finish(
            job_id, attempt, JobStatus.FAILED, at=at, outcome=interruptions.OUTCOME,
            error=interruptions.too_many(count, limit, error), interruptions=count,
        )  # fmt: skip

    def requeue_unstarted(
        self, job_id: str, *, attempt: int, reason: str, delay: float | None = None, at: datetime | None = None
    ) -> Job:
        """A new attempt of a job whose worker did not run it: the store never confirmed its start.

        No run was cut, so neither ``retry_count`` nor ``interruptions`` moves (spending them
        would end a healthy job FAILED for an API that was slow to answer). The next attempt
        waits ``delay`` (default ``UNSTARTED_RETRY_SECONDS``) in RQ's scheduler, so it cannot spin.
        The attempt's outcome is ``UNSTARTED``. A job that already ended is left as it is.
        """
        delay = UNSTARTED_RETRY_SECONDS if delay is None else delay
        requeued = False
        for run in conflicts.attempts():
            with run, JobRows.transaction(self.sessions) as rows:
                job = load_job(rows, job_id)
                check_attempt(job, attempt)
                if job.status in TERMINAL_VALUES:
                    return job
                retry_at = clock.now(rows.session) + timedelta(seconds=delay)
                requeued = new_attempt(rows, job, attempt, AUTO_RETRY_FROM, next_retry_at=retry_at, error=reason)
                if requeued:
                    rows.end_attempt(job_id, attempt, interruptions.UNSTARTED_OUTCOME, reason, at or utcnow())
                    log.warning(
                        "job %s attempt %s not started (%s); attempt %s at %s",
                        job_id,
                        attempt,
                        reason,
                        job.attempt,
                        retry_at,
                    )
        return self.enqueue_job(job_id) if requeued else job

    def mark_snoozed(
        self, job_id: str, *, attempt: int, seconds: float, reason: str, at: datetime | None = None
    ) -> Job:
        """Record an attempt whose task asked to run again later (``raise Snooze(seconds, reason)``).

        No failure and no cut run: neither ``retry_count`` nor ``interruptions`` moves. A new
        attempt waits ``seconds`` in RQ's scheduler (from the database's time), QUEUED meanwhile;
        ``snoozes`` counts it, and the snooze past ``max_snoozes`` ends the job FAILED instead (a
        task that snoozes for ever), and so does one whose new attempt would pass
        ``max_attempts`` (``MAX_ATTEMPTS_PER_JOB``: every snooze keeps an attempt row, and
        max_snoozes may be far above it). The attempt's outcome is ``SNOOZED`` with the reason as
        its error text either way. A job that already ended is left as it is.
        """
        requeued = over_cap = False
        for run in conflicts.attempts():
            with run, JobRows.transaction(self.sessions) as rows:
                job = load_job(rows, job_id)
                check_attempt(job, attempt)
                if job.status in TERMINAL_VALUES:
                    return job
                count, limit = job.snoozes + 1, job.max_snoozes
                over_cap = self.max_attempts is not None and attempt >= self.max_attempts
                if count > limit or over_cap:
                    break
                retry_at = clock.now(rows.session) + timedelta(seconds=seconds)
                # error None: a snooze is no failure (and a row with snoozes > 0, next_retry_at ahead
                # and no error reads as snoozed in a list's waiting_reason).
                requeued = new_attempt(
                    rows, job, attempt, AUTO_RETRY_FROM, snoozes=count, next_retry_at=retry_at, error=None
                )
                if requeued:
                    rows.end_attempt(job_id, attempt, SNOOZED_OUTCOME, reason, at or utcnow())
                    log.info(
                        "job %s attempt %s snoozed (%s of %s) for %.3g s: %s; attempt %s at %s",
                        job_id, attempt, count, limit, seconds, reason, job.attempt, retry_at,
                    )  # fmt: skip
        if requeued:
            return self.enqueue_job(job_id)
        if job.status in TERMINAL_VALUES or (count <= limit and not over_cap):
            return job  # a repeat, or a move refused by a racing writer
        if count > limit:
            error = f"snoozed more than max_snoozes ({limit}) times; last reason: {reason or 'none given'}"
        else:
            error = (
                f"snoozed on attempt {attempt}, the most a job may have (MAX_ATTEMPTS_PER_JOB={self.max_attempts}); "
                f"last reason: {reason or 'none given'}"
            )
        return self._finish(
            job_id, attempt, JobStatus.FAILED, at=at, outcome=SNOOZED_OUTCOME, error=error, snoozes=count
        )

    def end_job(self, job_id: str, *, error: str) -> Job:
        """End a live job as FAILED now, retries or not (maintenance)."""
        with JobRows.opened(self.sessions) as rows:
            job = load_job(rows, job_id)
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
        for run in conflicts.attempts():
            with run, JobRows.transaction(self.sessions) as rows:
                job = load_job(rows, job_id, owner=owner)
                if job.status not in MANUAL_RETRY_FROM:
                    raise InvalidTransition(
                        job_id,
                        job.status,
                        JobStatus.PENDING.value,
                        reason="only FAILED or CANCELLED jobs can be retried",
                    )
                if max_attempts is not None and job.attempt >= max_attempts:
                    raise Conflict(
                        f"job {job_id} has had {job.attempt} attempts, the most a job may have by retries "
                        f"(MAX_ATTEMPTS_PER_JOB={max_attempts}); submit it as a new job",
                        details={"setting": "MAX_ATTEMPTS_PER_JOB", "limit": max_attempts, "attempt": job.attempt},
                    )
                new_attempt(
                    rows, job, job.attempt, MANUAL_RETRY_FROM,
                    next_retry_at=None, cancelled_by=None, cancelled_at=None, error=None,
                )  # fmt: skip
        return self.enqueue_job(job_id)

    def requeue_lost(self, job_id: str, *, attempt: int, reason: str) -> Job:
        """Start a new attempt of a job that Redis lost before any worker ran it.

        The old attempt is fenced first, so a worker that popped it but had not started it
        never runs it (a BrokerError here leaves the job as it was, for the next pass).
        """
        self.queues.fence(rq_job_id(job_id, attempt))
        for run in conflicts.attempts():
            with run, JobRows.transaction(self.sessions) as rows:
                job = load_job(rows, job_id)
                if not new_attempt(rows, job, attempt, REQUEUE_FROM):
                    return job
                log.warning("job %s attempt %s lost (%s); attempt %s queued", job_id, attempt, reason, job.attempt)
        return self.enqueue_job(job_id)

    def _finish(
        self,
        job_id: str,
        attempt: int,
        target: JobStatus,
        *,
        at: datetime | None = None,
        outcome: str | None = None,
        **fields,
    ) -> Job:
        """End attempt ``attempt`` as ``target`` (an end status), then release the job's dependants.

        ``outcome``: the attempt's recorded outcome, when not ``target`` (an interrupted run).
        """
        for run in conflicts.attempts():
            with run, JobRows.transaction(self.sessions) as rows:
                job = load_job(rows, job_id)
                now = at or utcnow()
                if job.started_at is not None and job.attempt == attempt:
                    now = max(now, job.started_at)
                changed = transition(rows, job, target, attempt=attempt, completed_at=now, **fields)
                if changed:
                    rows.end_attempt(job_id, attempt, outcome or target, fields.get("error"), now)
                    log.info("job %s attempt %s %s", job_id, attempt, target.value, extra=job_fields(job))
        if changed and job.has_dependants:
            self._release_dependants(job_id)
        return job
