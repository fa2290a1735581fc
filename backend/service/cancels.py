"""Cancelling jobs: one (``POST /jobs/<id>/cancel``) or many (bulk and batch cancels).

``Cancels`` is the part of ``JobManager`` that fences a job's attempt in Redis, writes
CANCELLED, takes the RQ job off its queue (or stops its worker) and releases its dependants
(through the dependencies part).
"""

from __future__ import annotations

import logging

from backend.broker.errors import BrokerError
from backend.broker.queues import QueueAdapter
from backend.core.errors import InvalidTransition, NotFound, ServiceUnavailable, StaleAttempt
from backend.core.states import TERMINAL_VALUES, JobStatus
from backend.service.bulk import act_on_each
from backend.service.transitions import CAS_ATTEMPTS, load_job, transition
from backend.store import conflicts
from backend.store.jobs import JobRows, Sessions
from backend.store.models import Job, utcnow

log = logging.getLogger(__name__)


class Cancels:
    """Cancelling live jobs (a part of ``JobManager``)."""

    sessions: Sessions
    queues: QueueAdapter

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
        for _ in range(CAS_ATTEMPTS):
            with JobRows.opened(self.sessions) as rows:
                seen = load_job(rows, job_id, owner=owner)
            if seen.status in TERMINAL_VALUES:
                raise InvalidTransition(job_id, seen.status, JobStatus.CANCELLED.value)
            try:
                self.queues.fence(seen.rq_job_id)
            except BrokerError as exc:
                if fence:
                    raise ServiceUnavailable("Redis is unreachable: the job cannot be stopped now") from exc
                log.warning("job %s: cancelled without a fence (%s)", job_id, exc)
            try:
                # Only the store's write is run again after a deadlock; the fence is in Redis, before.
                for run in conflicts.attempts():
                    with run, JobRows.transaction(self.sessions) as rows:
                        job = load_job(rows, job_id, owner=owner)
                        now = utcnow()
                        transition(
                            rows, job, JobStatus.CANCELLED, attempt=seen.attempt, strict=True, error=reason,
                            cancelled_by=by, cancelled_at=now, completed_at=now, next_retry_at=None,
                        )  # fmt: skip
                        rows.end_attempt(
                            job_id, job.attempt, JobStatus.CANCELLED, f"cancelled by {by}", now, only_open=True
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
        except BrokerError as exc:
            # Fenced already: no worker will start it; the stop of a running one waits.
            log.warning("job %s: could not stop its RQ job %s: %s", job_id, job.rq_job_id, exc)
        if job.has_dependants:
            self._release_dependants(job_id)
        return job

    def cancel_many(self, job_ids: list[str], *, owner: str | None, by: str) -> tuple[list[str], list[dict]]:
        """Cancel the listed jobs; returns the ids cancelled and, for the others, why not.

        One query finds which of the ids exist (the owner's) and which of those are live: an
        unknown or ended job costs no further work, only a live one is cancelled (fenced and
        written one by one, as ``cancel_job`` does). The caller bounds how many ids one call takes.
        """
        wanted = list(dict.fromkeys(job_ids))
        with JobRows.opened(self.sessions) as rows:
            found = rows.statuses(wanted, owner=owner)

        def cancel(job_id: str) -> None:
            status = found.get(job_id)
            if status is None:
                raise NotFound(f"no job {job_id!r}")
            if status in TERMINAL_VALUES:
                raise InvalidTransition(job_id, status, JobStatus.CANCELLED.value)
            self.cancel_job(job_id, owner=owner, by=by)

        # A failure may come after the write: the job counts as cancelled if the store says so.
        return act_on_each(
            wanted,
            cancel,
            verb="cancel",
            done_after_all=lambda job_id: self._status_or_none(job_id, owner=owner) == JobStatus.CANCELLED.value,
        )

    def _status_or_none(self, job_id: str, *, owner: str | None) -> str | None:
        """A job's status in the store, or None when it cannot be read (unknown or store error)."""
        try:
            with JobRows.opened(self.sessions) as rows:
                return load_job(rows, job_id, owner=owner).status
        except Exception:
            log.exception("job %s: status unreadable after a failed cancel", job_id)
            return None
