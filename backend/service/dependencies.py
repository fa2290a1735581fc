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
            if parent.status != JobStatus.COMPLETED and not child.allow_failure:
                self._cancel_for_dependency(child.id, parent)
            elif not self.waiting_for(child):
                if child.status == JobStatus.PENDING:
                    self.enqueue_job(child.id)
                elif self.queues.discard_deferred(child.rq_job_id):
                    # RQ enqueues dependants when a parent's RQ job finishes; a parent that
                    # needed retries (a new RQ job) or failed with allow_failure is ours to do.
                    self._send(child, get_task(child.task), [], now=now)
