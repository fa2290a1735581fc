"""Jobs that wait for other jobs: what they still wait for, and what happens when one ends.

``Dependencies`` is the part of ``JobManager`` that, when a job ends, cancels the jobs that
needed it to succeed and lets the others run. RQ's own dependencies hold a dependant in the
deferred registry until its parent's RQ job finishes; the store's edges (``job_dependencies``)
decide the rest, since a parent may finish through a retry (a new RQ job) or fail. It cancels
through the cancel part and enqueues through the submissions part.
"""

from __future__ import annotations

from backend.broker.queues import QueueAdapter
from backend.core.errors import InvalidTransition
from backend.core.states import TERMINAL_VALUES, JobStatus
from backend.store import clock
from backend.store.jobs import JobRows, Sessions
from backend.store.models import Job
from backend.tasks import get_task


class Dependencies:
    """Releasing or cancelling the jobs that wait for another (a part of ``JobManager``)."""

    sessions: Sessions
    queues: QueueAdapter

    def waiting_for(self, job: Job) -> list[str]:
        """The jobs this one still waits for (its dependencies that have not ended)."""
        if not job.depends_on or job.status in TERMINAL_VALUES:
            return []
        with JobRows.opened(self.sessions) as rows:
            ended = rows.ended_ids(job.depends_on)
        return [parent for parent in job.depends_on if parent not in ended]

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
        with JobRows.opened(self.sessions) as rows:
            parent = rows.get(parent_id)
            children = rows.live_dependants(parent_id)
            # A child's run_at or retry time is compared with the database's time (hosts' clocks
            # differ); only read when one has such a time, so most releases cost no query.
            now = clock.now(rows.session) if any(c.run_at or c.next_retry_at for c in children) else None
        for child in children:
            self._release(child, parent, now)

    def release_if_due(self, job_id: str) -> bool:
        """Release a live job whose parents have all ended, as its last parent's end would have:
        for the reconciler, when that release did not happen (Redis failed as the parent's end
        was applied; the end stays, the report is not applied again). True if it was enqueued."""
        with JobRows.opened(self.sessions) as rows:
            child = rows.get(job_id)
            if child is None or child.status in TERMINAL_VALUES or not child.depends_on:
                return False
            parents = rows.jobs(child.depends_on)
            if len(parents) < len(set(child.depends_on)) or any(p.status not in TERMINAL_VALUES for p in parents):
                return False
            now = clock.now(rows.session) if child.run_at or child.next_retry_at else None
        unsuccessful = [p for p in parents if p.status != JobStatus.COMPLETED]
        return self._release(child, unsuccessful[0] if unsuccessful else parents[0], now)

    def _release(self, child: Job, parent: Job, now) -> bool:
        """Let ``child`` run, or cancel it, now that ``parent`` ended; True if it was enqueued."""
        if parent.status != JobStatus.COMPLETED and not child.allow_failure:
            self._cancel_for_dependency(child.id, parent)
        elif not self.waiting_for(child):
            if child.status == JobStatus.PENDING:
                return self.enqueue_job(child.id).status != JobStatus.PENDING
            if self.queues.discard_deferred(child.rq_job_id):
                # RQ enqueues dependants when a parent's RQ job finishes; a parent that
                # needed retries (a new RQ job) or failed with allow_failure is ours to do.
                self._send(child, get_task(child.task), [], now=now)
                return True
        return False
