"""Cancelling jobs: one (``POST /jobs/<id>/cancel``) or many (bulk and batch cancels).

``Cancels`` is the part of ``JobManager`` that fences a job's attempt in Redis, writes
CANCELLED, takes the RQ job off its queue (or stops its worker) and releases its dependants
(through the dependencies part).
"""

from __future__ import annotations

import logging

from backend.broker.errors import BrokerError
from backend.broker.queues import QueueAdapter
from backend.core.errors import InvalidTransition, JobServiceError, NotFound, ServiceUnavailable, StaleAttempt
from backend.core.states import TERMINAL_VALUES, JobStatus
from backend.service.bulk import act_on_each, refusal
from backend.service.transitions import CAS_ATTEMPTS, load_job, transition
from backend.store import conflicts
from backend.store.errors import is_unavailable
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

    #: How many jobs ``cancel_many`` writes CANCELLED per transaction: SQLite's one writer is held
    #: for one chunk at a time, not for a whole request.
    CANCEL_CHUNK = 100

    def cancel_many(self, job_ids: list[str], *, owner: str | None, by: str) -> tuple[list[str], list[dict]]:
        """Cancel the listed jobs; returns the ids cancelled and, for the others, why not.

        What ``cancel_job`` does for each, by steps over them all: one query reads the jobs (an
        unknown or ended one costs nothing further); ``CANCEL_CHUNK`` jobs at a time, one round
        trip fences their attempts and one transaction writes CANCELLED; then their RQ jobs are
        read in one round trip and taken off their queues (or stopped). A job that began a new attempt
        meanwhile, or whose chunk failed unforeseen, goes through ``cancel_job`` on its own. The
        caller bounds how many ids one call takes.
        """
        wanted = list(dict.fromkeys(job_ids))
        with JobRows.opened(self.sessions) as rows:
            seen = {job.id: job for job in rows.jobs(wanted, owner=owner)}
        refused: dict[str, JobServiceError] = {}
        live: list[Job] = []
        for job_id in wanted:
            job = seen.get(job_id)
            if job is None:
                refused[job_id] = NotFound(f"no job {job_id!r}")
            elif job.status in TERMINAL_VALUES:
                refused[job_id] = InvalidTransition(job_id, job.status, JobStatus.CANCELLED.value)
            else:
                live.append(job)
        cancelled: dict[str, Job] = {}
        alone: list[str] = []  # for cancel_job: a new attempt began, or the chunk failed unforeseen
        try:
            for start in range(0, len(live), self.CANCEL_CHUNK):
                # Each chunk fenced just before its write, so a failure leaves at most one chunk
                # fenced and not written (a worker refuses it; the reconciler gives it a new attempt).
                part = live[start : start + self.CANCEL_CHUNK]
                chunk = {job.id: job.attempt for job in part}
                try:
                    self.queues.fence_many([job.rq_job_id for job in part])
                except BrokerError:
                    for job in live[start:]:
                        refused[job.id] = ServiceUnavailable("Redis is unreachable: the job cannot be stopped now")
                    break
                try:
                    written, stale, ended = self._write_cancels(chunk, owner=owner, by=by)
                except Exception as exc:
                    if is_unavailable(exc):
                        raise  # 503; the chunks written so far are tidied all the same (below)
                    log.exception("bulk cancel: %s jobs' writes failed; each is cancelled on its own", len(chunk))
                    alone += list(chunk)
                    continue
                cancelled.update(written)
                refused.update(ended)
                alone += stale
        finally:
            self._after_cancels(cancelled, by=by)
        done_alone, refused_alone = act_on_each(
            alone,
            lambda job_id: self.cancel_job(job_id, owner=owner, by=by),
            verb="cancel",
            done_after_all=lambda job_id: self._status_or_none(job_id, owner=owner) == JobStatus.CANCELLED.value,
        )
        done = set(cancelled) | set(done_alone)
        by_id = {entry["job_id"]: entry for entry in refused_alone}
        by_id.update({job_id: refusal(job_id, exc) for job_id, exc in refused.items()})
        return [job_id for job_id in wanted if job_id in done], [by_id[job_id] for job_id in wanted if job_id in by_id]

    def _write_cancels(
        self, attempts: dict[str, int], *, owner: str | None, by: str
    ) -> tuple[dict[str, Job], list[str], dict[str, JobServiceError]]:
        """Write CANCELLED to the jobs of ``attempts`` (id: the attempt fenced) in one transaction.

        Returns:
            The jobs cancelled; those now on another attempt (their fence is the old one's);
            those that ended meanwhile, with their refusal.
        """
        for run in conflicts.attempts():
            with run, JobRows.transaction(self.sessions) as rows:
                written: dict[str, Job] = {}
                stale: list[str] = []
                ended: dict[str, JobServiceError] = {}
                now = utcnow()
                # In id order, as every write of several jobs locks them (no deadlock between two).
                for job in sorted(rows.jobs(list(attempts), owner=owner), key=lambda row: row.id):
                    try:
                        transition(
                            rows, job, JobStatus.CANCELLED, attempt=attempts[job.id], strict=True, error=None,
                            cancelled_by=by, cancelled_at=now, completed_at=now, next_retry_at=None,
                        )  # fmt: skip
                    except StaleAttempt:
                        stale.append(job.id)
                        continue
                    except (InvalidTransition, NotFound) as exc:
                        ended[job.id] = exc
                        continue
                    rows.end_attempt(
                        job.id, job.attempt, JobStatus.CANCELLED, f"cancelled by {by}", now, only_open=True
                    )
                    written[job.id] = job
                for job_id in attempts.keys() - {*written, *stale, *ended}:
                    ended[job_id] = NotFound(f"no job {job_id!r}")  # pruned since it was read
        return written, stale, ended

    def _after_cancels(self, cancelled: dict[str, Job], *, by: str) -> None:
        """What follows the store's CANCELLED: the RQ jobs tidied, the dependants released (a
        release the store refuses is the reconciler's to make)."""
        self._tidy_cancelled(list(cancelled.values()))
        for job_id, job in cancelled.items():
            log.info("job %s cancelled by %s", job_id, by)
            if job.has_dependants:
                try:
                    self._release_dependants(job_id)
                except Exception:
                    log.exception("job %s: its dependants are left for the reconciler to release", job_id)

    def _tidy_cancelled(self, jobs: list[Job]) -> None:
        """Take cancelled jobs' RQ jobs off their queues, or stop them (read in one round trip).
        Their attempts are fenced already: a failure here is logged, as in ``cancel_job``."""
        if not jobs:
            return
        try:
            fetched = self.queues.fetch_many([job.rq_job_id for job in jobs])
        except BrokerError as exc:
            log.warning("%s cancelled jobs: could not read their RQ jobs: %s", len(jobs), exc)
            return
        for job in jobs:
            try:
                self.queues.cancel_fetched(job.rq_job_id, fetched[job.rq_job_id])
            except BrokerError as exc:
                log.warning("job %s: could not stop its RQ job %s: %s", job.id, job.rq_job_id, exc)
            except Exception:  # tidying only: the fence stops it; the rest go on
                log.exception("job %s: could not stop its RQ job %s", job.id, job.rq_job_id)

    def _status_or_none(self, job_id: str, *, owner: str | None) -> str | None:
        """A job's status in the store, or None when it cannot be read (unknown or store error)."""
        try:
            with JobRows.opened(self.sessions) as rows:
                return load_job(rows, job_id, owner=owner).status
        except Exception:
            log.exception("job %s: status unreadable after a failed cancel", job_id)
            return None
